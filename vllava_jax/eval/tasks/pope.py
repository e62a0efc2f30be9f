"""POPE: the three released `coco_pope_{adversarial,popular,random}.json` files (JSON lines
`{question_id, image, text, label}`), asked as LLaVA's llava_pope_test.jsonl asks them (the
question plus "Answer the question using a single word or phrase."), scored per file by
`metrics.pope`. Ids are `category/question_id` since each file numbers its questions from 1.
A question whose image is missing counts as answered wrongly (the opposite of its label)."""

from __future__ import annotations

import dataclasses

from etils import epath

from vllava_jax.eval.metrics.pope import answer_is_yes, pope_metrics
from vllava_jax.eval.tasks import MediaFinder, Sample, field, find_file, read_jsonl
from vllava_jax.eval.tasks.image_qa import SHORT_ANSWER

CATEGORIES = ("adversarial", "popular", "random")


@dataclasses.dataclass(frozen=True)
class PopeTask:
    name: str = "pope"
    media_kind: str = "image"
    template: str = "vicuna_v1"
    max_new_tokens: int = 128
    open_ended: bool = False

    def load(self, data: epath.Path) -> list[Sample]:
        finder = MediaFinder(data, ("val2014", "images", ""))
        samples = []
        for category in CATEGORIES:
            path = find_file(data, f"POPE {category} file", (f"coco_pope_{category}.json",))
            for number, row in enumerate(read_jsonl(path, "POPE file"), 1):
                where = f"{path}:{number}"
                question, image = str(field(row, "text", where)), str(field(row, "image", where))
                samples.append(Sample(id=f"{category}/{field(row, 'question_id', where)}", question=question,
                                      text=f"{question}\n{SHORT_ANSWER}", media_name=image, media=finder.find([image]),
                                      answer=str(field(row, "label", where)), extra={"category": category}))
        return samples

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        preds = [("no" if r["answer"] != "no" else "yes") if r["missing"] else r["pred"] for r in records]
        per_file = {}
        for category in CATEGORIES:
            rows = [(p, r["answer"]) for p, r in zip(preds, records) if r["extra"]["category"] == category]
            if rows:
                per_file[category] = pope_metrics(*zip(*rows))
        means = {key: sum(m[key] for m in per_file.values()) / len(per_file) if per_file else 0.0
                 for key in ("accuracy", "f1")}
        metrics = per_file | means | {"count": len(records)}
        verdicts = [{"yes": answer_is_yes(p), "correct": answer_is_yes(p) == (r["answer"] != "no")}
                    for p, r in zip(preds, records)]
        return verdicts, metrics
