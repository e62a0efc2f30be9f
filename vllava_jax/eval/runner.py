"""One evaluation run: load the task, generate the missing predictions in left-padded batches
(cached per question), judge or score them, and write predictions, verdicts, metrics and report.

Batches are left padded and positions come from the attention mask, so a greedy answer does not
depend on which questions share its batch or on the batch size. Images and videos are decoded
on the host one by one first, so an unreadable file is recorded against its own question
instead of failing the batch.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import sys
import time

import numpy as np
from etils import epath
from tqdm import tqdm

from vllava_jax import generation
from vllava_jax.errors import VllavaError
from vllava_jax.eval.cache import JsonlCache, write_atomic, write_jsonl
from vllava_jax.eval.report import write_report
from vllava_jax.eval.tasks import DataError, Sample, Task, registry
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

    def settings(self, task: Task) -> dict:
        """What a cached prediction depends on; a rerun into the same output dir must match it."""
        adapter = {"adapter": self.adapter} if self.adapter else {}  # absent without one: older outputs resume
        return {"task": self.task, "model": self.model, "data": self.data, "dtype": self.dtype,
                "template": task.template, "max_new_tokens": self.max_new_tokens or task.max_new_tokens} | adapter


def prompt_of(task: Task, sample: Sample) -> str:
    placeholder = VIDEO_TOKEN if task.media_kind == "video" else IMAGE_TOKEN
    return get_template(task.template).prompt([sample.text], [placeholder])


def _read_media(task: Task, sample: Sample, num_frames: int):
    """Decoded pixels, or the reason they could not be read."""
    if sample.media is None:
        return None, f"missing {task.media_kind}: {sample.media_name}"
    try:
        if task.media_kind == "video":
            return read_frames(sample.media, num_frames), None
        return load_image(sample.media), None
    except VllavaError as e:
        return None, f"unreadable {task.media_kind}: {e}"


def generate_answers(model, processor, task: Task, samples: list[Sample], media: list, sampling) -> list[str]:
    """Greedy answers for one left-padded batch, decoded as the original scripts decode them."""
    key = "videos" if task.media_kind == "video" else "images"
    batch = processor(text=[prompt_of(task, s) for s in samples], padding=True, **{key: media})
    ids = generation.generate(model, batch["input_ids"], batch["attention_mask"], batch.get("pixel_values_images"),
                              batch.get("pixel_values_videos"), sampling=sampling)
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
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = {k: (previous.get(k), v) for k, v in settings.items() if previous.get(k) != v}
            raise DataError(f"{out} holds predictions made with other settings {changed} (old, new); use another "
                            "--output or delete that dir")
    else:
        write_atomic(path, json.dumps(settings, indent=2))


def predict(config: RunConfig, task: Task, samples: list[Sample], cache: JsonlCache, model=None, processor=None):
    """Fill the cache with a prediction for every sample; loads the model only when one is needed."""
    pending = [s for s in samples if s.id not in cache]
    if not pending:
        return
    if model is None:
        import vllava_jax

        model = vllava_jax.load_pretrained(config.model, dtype=config.dtype)
        if config.adapter:
            from vllava_jax.checkpoint import peft

            model = peft.load_adapter(model, config.adapter)
        processor = vllava_jax.Processor.from_pretrained(config.model)
    sampling = generation.sampling_config(model.config, config.max_new_tokens or task.max_new_tokens)
    with tqdm(total=len(samples), initial=len(samples) - len(pending), desc=f"{task.name} generate", unit="q",
              file=sys.stderr, dynamic_ncols=True) as bar:
        for start in range(0, len(pending), config.batch_size):
            chunk = pending[start:start + config.batch_size]
            read = [_read_media(task, s, processor.num_frames) for s in chunk]
            ready = [(s, pixels) for s, (pixels, error) in zip(chunk, read) if error is None]
            answers = dict(zip([s.id for s, _ in ready],
                               generate_answers(model, processor, task, [s for s, _ in ready], [p for _, p in ready],
                                                sampling))) if ready else {}
            cache.add([record_of(task, s, answers.get(s.id, ""), error) for s, (_, error) in zip(chunk, read)])
            bar.update(len(chunk))


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
    samples = task.load(epath.Path(config.data))
    if config.limit is not None:
        samples = samples[: config.limit]
    out = epath.Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    _check_settings(out, config.settings(task))
    cache = JsonlCache(out / "predictions.jsonl")
    predict(config, task, samples, cache, model, processor)
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
        "missing_media_names": missing, "malformed_judge_replies": malformed}
    write_jsonl(out / "judged.jsonl", judged)
    write_atomic(out / "metrics.json", json.dumps(doc, indent=2, ensure_ascii=False))
    write_report(out / "report.html", f"{task.name}: {config.model}", doc, records, verdicts, task.media_kind,
                 config.report_samples)
    doc["seconds"] = time.perf_counter() - began
    return doc


def summary_line(doc: dict, output: str) -> str:
    m = doc["metrics"]
    parts = [f"accuracy {100 * m['accuracy']:.2f}%"]
    if "score" in m:
        parts.append(f"score {m['score']:.2f}")
    if "f1" in m:
        parts.append(f"mean F1 {100 * m['f1']:.2f}%")
    return (f"{doc['task']}: {', '.join(parts)} on {doc['questions']} questions ({doc['missing_media']} missing "
            f"media, {doc['malformed_judge_replies']} malformed judge replies), judge {doc['judge']}; "
            f"outputs in {output} [{doc['seconds']:.1f}s]")
