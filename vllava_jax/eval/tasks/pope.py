"""POPE as LLaVA's eval_pope.py scores it: the questions of `llava_pope_test.jsonl`
(`{question_id, image, text, category}`, the text already ending with "Answer the question using a
single word or phrase.") and, per category, the labels of the COCO POPE file
`coco_pope_{category}.json` (JSON lines `{question_id, image, text, label}`, in `coco/` or the data
dir), paired by position within the category as the original zips them (we also check that the
counts and images agree). Without `llava_pope_test.jsonl` the three COCO POPE files alone give the
questions (ids `category/question_id`, since each file numbers from 1). Images in `val2014/`.
A question whose image is missing counts as answered wrongly (the opposite of its label)."""

from __future__ import annotations

import dataclasses

from etils import epath

from vllava_jax.eval.metrics.pope import answer_is_yes, pope_metrics
from vllava_jax.eval.tasks import MediaFinder, Sample, check_unique, field, find_file, read_jsonl
from vllava_jax.errors import DataError
from vllava_jax.eval.tasks.image_qa import SHORT_ANSWER

CATEGORIES = ("adversarial", "popular", "random")
LLAVA_QUESTIONS = "llava_pope_test.jsonl"


def label_file(data: epath.Path, category: str) -> epath.Path:
    name = f"coco_pope_{category}.json"
    return find_file(data, f"POPE {category} file", (name, f"coco/{name}"))


@dataclasses.dataclass(frozen=True)
class PopeTask:
    name: str = "pope"
    media_kind: str = "image"
    template: str = "vicuna_v1"
    max_new_tokens: int = 128
    open_ended: bool = False

    def load(self, data: epath.Path) -> list[Sample]:
        finder = MediaFinder(data, ("val2014", "images", ""))
        if (data / LLAVA_QUESTIONS).exists():
            return self._load_llava(data, finder)
        samples = []
        for category in CATEGORIES:
            path = label_file(data, category)
            for number, row in enumerate(read_jsonl(path, "POPE file"), 1):
                where = f"{path}:{number}"
                question, image = str(field(row, "text", where)), str(field(row, "image", where))
                samples.append(Sample(id=f"{category}/{field(row, 'question_id', where)}", question=question,
                                      text=f"{question}\n{SHORT_ANSWER}", media_name=image, media=finder.find([image]),
                                      answer=str(field(row, "label", where)), extra={"category": category}))
        return samples

    def _load_llava(self, data: epath.Path, finder: MediaFinder) -> list[Sample]:
        q_file = data / LLAVA_QUESTIONS
        questions = [(f"{q_file}:{n}", row) for n, row in enumerate(read_jsonl(q_file, "question file"), 1)]
        categories = dict.fromkeys(str(field(row, "category", where)) for where, row in questions)
        labels = {}
        for category in categories:
            path = label_file(data, category)
            labels[category] = (path, read_jsonl(path, "POPE file"))
        position = dict.fromkeys(categories, 0)
        samples = []
        for where, row in questions:
            category = str(row["category"])
            path, rows = labels[category]
            index = position[category]
            position[category] += 1
            if index >= len(rows):
                raise DataError(f"{where}: {q_file} has more {category} questions than {path} has labels")
            label_row, image = rows[index], str(field(row, "image", where))
            if str(field(label_row, "image", f"{path}:{index + 1}")) != image:
                raise DataError(f"{where}: image {image!r} but {path}:{index + 1} (paired by position) has "
                                f"{label_row['image']!r}")
            text = str(field(row, "text", where))
            samples.append(Sample(id=str(field(row, "question_id", where)), question=text.split("\n")[0], text=text,
                                  media_name=image, media=finder.find([image]),
                                  answer=str(field(label_row, "label", f"{path}:{index + 1}")),
                                  extra={"category": category}))
        for category, (path, rows) in labels.items():
            if position[category] != len(rows):
                raise DataError(f"{path} has {len(rows)} labels but {q_file} has {position[category]} {category} "
                                "questions")
        check_unique((s.id for s in samples), str(q_file))
        return samples

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        preds = [("no" if r["answer"] != "no" else "yes") if r["missing"] else r["pred"] for r in records]
        per_file = {}
        for category in dict.fromkeys(r["extra"]["category"] for r in records):
            rows = [(p, r["answer"]) for p, r in zip(preds, records) if r["extra"]["category"] == category]
            per_file[category] = pope_metrics(*zip(*rows))
        means = {key: sum(m[key] for m in per_file.values()) / len(per_file) if per_file else 0.0
                 for key in ("accuracy", "f1")}
        metrics = per_file | means | {"count": len(records)}
        verdicts = [{"yes": answer_is_yes(p), "correct": answer_is_yes(p) == (r["answer"] != "no")}
                    for p, r in zip(preds, records)]
        return verdicts, metrics
