"""One evaluation run: load the task, generate the missing predictions in left-padded batches
(cached per question), judge or score them, and write predictions, verdicts, metrics and report.

Batches are left padded and positions come from the attention mask, so a greedy answer does not
depend on which questions share its batch or on the batch size. Each image or video goes through
the towers once however many questions ask about it (`vllava_jax.features.FeatureCache`); it is
decoded on the host only then, one by one, so an unreadable file is recorded against its own
questions instead of failing the batch.

`shard=(I, N)` predicts only questions I, I+N, I+2N, ... into OUTPUT/shards/I-of-N (one process or
host each); `merge` then gathers every shard's predictions into OUTPUT, checking that each question
was answered exactly once with the same settings, and judges and scores them as one run would.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import sys
import time

import numpy as np
from etils import epath
from tqdm import tqdm

from vllava_jax import generation
from vllava_jax.checkpoint.detect import detect
from vllava_jax.cli import make_output_dir
from vllava_jax.errors import VllavaError
from vllava_jax.features import FeatureCache, preprocessing_fingerprint
from vllava_jax.eval.cache import JsonlCache, write_atomic, write_jsonl
from vllava_jax.eval.report import write_report
from vllava_jax.eval.tasks import Sample, Task, registry
from vllava_jax.errors import DataError
from vllava_jax.processing.conversation import get_template
from vllava_jax.processing.image import load_image
from vllava_jax.processing.processor import IMAGE_TOKEN, VIDEO_TOKEN
from vllava_jax.processing.video import read_frames


@dataclasses.dataclass(frozen=True)
class RunConfig:
    task: str
    model: str
    data: str
    output: str
    judge: str = "offline"
    limit: int | None = None
    batch_size: int = 1
    max_new_tokens: int | None = None     # None: the original script's value for the task
    dtype: str = "float32"
    adapter: str | None = None  # a PEFT LoRA adapter dir applied unmerged
    judge_tries: int = 3
    report_samples: int = 24
    shard: tuple[int, int] | None = None   # (index, count): predict only every count-th question from index
    merge: bool = False                     # gather the shards' predictions, then judge and score

    def settings(self, task: Task) -> dict:
        """What a cached prediction depends on; a rerun into the same output dir must match it."""
        adapter = {"adapter": os.path.abspath(self.adapter)} if self.adapter else {}  # absent without one: older outputs resume
        return {"task": self.task, "model": os.path.abspath(self.model), "data": os.path.abspath(self.data),
                "dtype": self.dtype,
                "template": task.template, "max_new_tokens": self.max_new_tokens or task.max_new_tokens} | adapter


def prompt_of(task: Task, sample: Sample) -> str:
    placeholder = VIDEO_TOKEN if task.media_kind == "video" else IMAGE_TOKEN
    return get_template(task.template).prompt([sample.text], [placeholder])


def media_pixels(task: Task, processor, sample: Sample):
    """Preprocessed pixels of a sample's image or video, or the reason they could not be read."""
    if sample.media is None:
        return None, f"missing {task.media_kind}: {sample.media_name}"
    try:
        if task.media_kind == "video":
            return processor.preprocess_video(read_frames(sample.media, processor.num_frames)), None
        return processor.preprocess_image(load_image(sample.media)), None
    except VllavaError as e:
        return None, f"unreadable {task.media_kind}: {e}"


def feature_keys(task: Task, processor, samples: list[Sample], features: FeatureCache) -> tuple[dict, dict]:
    """Each sample's feature-cache key, after encoding the media not cached yet in one tower call;
    and the error of each sample whose medium is missing or unreadable."""
    keys, errors, fresh = {}, {}, {}
    for s in samples:
        try:
            key = None if s.media is None else features.key(task.media_kind, s.media)
        except OSError as e:
            errors[s.id] = f"unreadable {task.media_kind}: {e}"
            continue
        if key is not None and (key in features or key in fresh):
            keys[s.id] = key
            continue
        pixels, error = media_pixels(task, processor, s)
        if error is not None:
            errors[s.id] = error
        else:
            keys[s.id], fresh[key] = key, pixels
    if fresh:
        features.add(task.media_kind, list(fresh), np.stack(list(fresh.values())))
    return keys, errors


def generate_answers(model, processor, task: Task, samples: list[Sample], features, sampling) -> list[str]:
    """Greedy answers for one left-padded batch, given its visual features in placeholder order,
    decoded as the original scripts decode them."""
    key = "pixel_values_videos" if task.media_kind == "video" else "pixel_values_images"
    batch = processor.tokenize([prompt_of(task, s) for s in samples], processor.num_frames, padding=True)
    ids = generation.generate(model, batch["input_ids"], batch["attention_mask"], sampling=sampling,
                              **{key: features})
    answers = []
    for row in ids[:, batch["input_ids"].shape[1]:]:
        stops = np.flatnonzero(np.isin(row, sampling.eos_token_ids))
        answers.append(processor.decode(row[: stops[0] if stops.size else len(row)], skip_special_tokens=True).strip())
    return answers


def record_of(task: Task, sample: Sample, pred: str, error: str | None) -> dict:
    """The original's `{id, question, answer, pred}` plus what we need to resume and report."""
    return {"id": sample.id, "question": sample.question, "answer": sample.answer, "pred": pred,
            "prompt": prompt_of(task, sample), "media_name": sample.media_name, "media": sample.media,
            "missing": error is not None, "error": error, "extra": sample.extra}


def _check_settings(out: epath.Path, settings: dict) -> None:
    """Refuse to mix predictions of other settings into `out`; run.json is written with the first prediction."""
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings and (out / "predictions.jsonl").exists():
            changed = {k: (previous.get(k), settings.get(k)) for k in previous | settings
                       if previous.get(k) != settings.get(k)}
            raise DataError(f"{out} holds predictions made with other settings {changed} (old, new); use another "
                            "--output or delete that dir")


def predict(config: RunConfig, task: Task, samples: list[Sample], cache: JsonlCache, model=None,
            processor=None) -> dict:
    """Fill the cache with a prediction for every sample; loads the model only when one is needed.
    Returns how many media went through the towers and how often features were reused."""
    pending = [s for s in samples if s.id not in cache]
    if not pending:
        return {"tower_runs": 0, "reused": 0}
    if model is None:
        import vllava_jax

        processor = vllava_jax.Processor.from_pretrained(config.model)
        model = vllava_jax.load_pretrained(config.model, dtype=config.dtype)
        if config.adapter:
            from vllava_jax.checkpoint import peft

            model = peft.load_adapter(model, config.adapter)
    write_atomic(cache.path.parent / "run.json", json.dumps(config.settings(task), indent=2))
    sampling = generation.sampling_config(model.config, config.max_new_tokens or task.max_new_tokens)
    features = FeatureCache(model, fingerprint=preprocessing_fingerprint(processor))
    answered = 0
    with tqdm(total=len(samples), initial=len(samples) - len(pending), desc=f"{task.name} generate", unit="q",
              file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(pending), config.batch_size):
            chunk = pending[start:start + config.batch_size]
            keys, errors = feature_keys(task, processor, chunk, features)
            ready = [s for s in chunk if s.id in keys]
            answers = dict(zip([s.id for s in ready], generate_answers(
                model, processor, task, ready, features.batch([keys[s.id] for s in ready]), sampling))) if ready else {}
            cache.add([record_of(task, s, answers.get(s.id, ""), errors.get(s.id)) for s in chunk])
            answered += len(ready)
            bar.update(len(chunk))
    return {"tower_runs": features.tower_runs, "reused": answered - features.tower_runs}


def merge_shards(out: epath.Path, samples: list[Sample], cache: JsonlCache, settings: dict) -> None:
    """Copy every shard's predictions into `cache` in question order; each question must have been
    answered by exactly the shard its position assigns it to, under the same settings."""
    dirs = sorted((out / "shards").glob("*-of-*")) if (out / "shards").is_dir() else []
    counts = {d.name.split("-of-")[1] for d in dirs}
    if len(counts) != 1:
        raise DataError(f"{out / 'shards'}: expected the outputs of one --shard I/N split, found "
                        f"{[d.name for d in dirs] or 'none'}")
    count = int(counts.pop())
    absent = [f"{i}-of-{count}" for i in range(count) if not (out / "shards" / f"{i}-of-{count}").is_dir()]
    if absent:
        raise DataError(f"{out / 'shards'}: no output from shard(s) {', '.join(absent)}; run them with --shard")
    unanswered, stray, answered = [], [], {}
    for index in range(count):
        shard = out / "shards" / f"{index}-of-{count}"
        if json.loads((shard / "run.json").read_text()) != settings:
            raise DataError(f"{shard} was run with other settings than this merge; rerun it or merge with its own")
        rows = JsonlCache(shard / "predictions.jsonl").rows
        mine = {s.id for s in samples[index::count]}
        unanswered += [s.id for s in samples[index::count] if s.id not in rows]
        stray += [i for i in rows if i not in mine]
        answered.update((i, rows[i]) for i in mine if i in rows)
    if unanswered or stray:
        raise DataError(f"{out / 'shards'}: {len(unanswered)} question(s) unanswered (first: {unanswered[:5]}) and "
                        f"{len(stray)} answered by the wrong shard (first: {stray[:5]}); rerun the shards")
    cache.add([answered[s.id] for s in samples if s.id not in cache])


def judge_records(config: RunConfig, records: list[dict], out: epath.Path) -> tuple[str, int]:
    """Attach a cached verdict to each record; returns the judge's name and the malformed replies seen."""
    from vllava_jax.eval.judge import make_judge

    judge = make_judge(config.judge, config.judge_tries)
    cache = JsonlCache(out / f"verdicts.{re.sub(r'[^A-Za-z0-9_.-]', '_', judge.name)}.jsonl")
    pending = [r for r in records if r["id"] not in cache]
    for r in tqdm(pending, desc=f"judge {judge.name}", unit="q", file=sys.stderr, dynamic_ncols=True,
                  disable=not pending):
        if r["missing"]:  # nothing to judge: a wrong answer, counted in both metrics
            verdict = {"pred": "no", "score": 0, "judge": "missing-media"}
        else:
            verdict = judge(r["question"], r["answer"], r["pred"]) | {"judge": judge.name}
        cache.add([{"id": r["id"], "verdict": verdict}])
    for r in records:
        r["verdict"] = cache.rows[r["id"]]["verdict"]
    return judge.name, sum(r["verdict"].get("malformed", 0) for r in records)


def run(config: RunConfig, model=None, processor=None) -> dict:
    """The metrics document (also written to metrics.json)."""
    began = time.perf_counter()
    tasks = registry()
    if config.task not in tasks:
        raise DataError(f"unknown task {config.task!r}; known: {', '.join(sorted(tasks))}")
    task = tasks[config.task]
    data = epath.Path(config.data)
    samples = task.load(data)
    if config.limit is not None:
        samples = samples[: config.limit]
    if not samples:
        raise DataError(f"{config.data}: the {task.name} annotations list no questions")
    resuming = (epath.Path(config.output) / "predictions.jsonl").exists()  # may need no model at all
    if model is None and not config.merge and not resuming:
        detect(config.model)  # a mistyped --model fails here, before --output is created
    out = make_output_dir(config.output, "--output")
    if config.shard is not None:
        index, count = config.shard
        samples, out = samples[index::count], out / "shards" / f"{index}-of-{count}"
        out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, config.settings(task))
    cache = JsonlCache(out / "predictions.jsonl")
    if config.merge:
        merge_shards(out, samples, cache, config.settings(task))
    visual = predict(config, task, samples, cache, model, processor)
    if config.shard is not None:
        return {"task": task.name, "shard": f"{config.shard[0]}/{config.shard[1]}", "questions": len(samples),
                "output": str(out), "visual_features": visual, "seconds": time.perf_counter() - began}
    records = [dict(cache.rows[s.id]) for s in samples]
    malformed = 0
    if task.open_ended:
        judge_name, malformed = judge_records(config, records, out)
    else:
        judge_name = f"official:{task.name}"
    verdicts, metrics = task.score(records)
    judged = [r | {"verdict": v, "judge": v.get("judge", judge_name)} for r, v in zip(records, verdicts)]
    missing = [r["media_name"] for r in records if r["missing"]]
    for line in [r["error"] for r in records if r["missing"]][:20]:
        print(f"warning: {line}", file=sys.stderr)
    doc = {"model": config.model, "task": task.name, "judge": judge_name, "date": datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"), "config": dataclasses.asdict(config) | config.settings(task),
        "metrics": metrics, "questions": len(records), "missing_media": len(missing),
        "missing_media_names": missing, "malformed_judge_replies": malformed, "visual_features": visual}
    upload = task.submission(records, data) if hasattr(task, "submission") else None
    if upload is not None:
        write_atomic(out / "submission.json", json.dumps(upload, ensure_ascii=False))
        doc["submission"] = str(out / "submission.json")
    write_jsonl(out / "judged.jsonl", judged)
    write_atomic(out / "metrics.json", json.dumps(doc, indent=2, ensure_ascii=False))
    write_report(out / "report.html", f"{task.name}: {config.model}", doc, records, verdicts, task.media_kind,
                 config.report_samples)
    doc["seconds"] = time.perf_counter() - began
    return doc


def summary_line(doc: dict, output: str) -> str:
    if "shard" in doc:
        return (f"{doc['task']} shard {doc['shard']}: {doc['questions']} questions predicted in {doc['output']} "
                f"[{doc['seconds']:.1f}s]; when every shard is done, rerun without --shard and with --merge")
    m = doc["metrics"]
    parts = [f"accuracy {100 * m['accuracy']:.2f}%"] if "accuracy" in m else [
        f"no local score (server-scored split): upload {doc['submission']}"]
    if "score" in m:
        parts.append(f"score {m['score']:.2f}")
    if "f1" in m:
        parts.append(f"mean F1 {100 * m['f1']:.2f}%")
    return (f"{doc['task']}: {', '.join(parts)} on {doc['questions']} questions ({doc['missing_media']} missing "
            f"media, {doc['malformed_judge_replies']} malformed judge replies), judge {doc['judge']}; "
            f"outputs in {output} [{doc['seconds']:.1f}s]")
