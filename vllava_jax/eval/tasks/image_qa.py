"""Short-answer image QA as LLaVA-1.5's model_vqa_loader.py runs it (Video-LLaVA uses its scripts):
a LLaVA question JSONL `{question_id, image, text}` whose `text` already ends with the answer-format
instruction (we append it when a file lacks it), the `vicuna_v1` template, greedy, 128 new tokens.

Ground truth comes from each benchmark's official annotation file: VQAv2
(`{"annotations": [{question_id, answers: [{answer}]}]}`), TextVQA (`{"data": [{question_id,
answers}]}`), VizWiz (`[{image, answers: [{answer}]}]`, joined on the image as its questions have
no ids) - all three scored by VQA accuracy - and GQA (`{question_id: {answer}}`, exact match).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from etils import epath

from vllava_jax.eval.metrics.gqa import gqa_correct
from vllava_jax.eval.metrics.vqa import vqa_accuracy
from vllava_jax.eval.tasks import DataError, MediaFinder, Sample, check_unique, field, find_file, read_json, read_jsonl

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


def _human_answers(rows: list, where: str, key: str) -> dict[str, list[str]]:
    out = {}
    for row in rows:
        answers = field(row, "answers", where)
        out[str(field(row, key, where))] = [a["answer"] if isinstance(a, dict) else a for a in answers]
    return out


def vqav2_answers(doc, where: str) -> dict[str, list[str]]:
    return _human_answers(field(doc, "annotations", where), where, "question_id")


def textvqa_answers(doc, where: str) -> dict[str, list[str]]:
    return _human_answers(field(doc, "data", where), where, "question_id")


def vizwiz_answers(doc, where: str) -> dict[str, list[str]]:
    if not isinstance(doc, list):
        raise DataError(f"{where}: expected VizWiz's JSON list of {{image, answers}} entries")
    return _human_answers(doc, where, "image")


def gqa_answers(doc, where: str) -> dict[str, str]:
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected GQA's JSON object question_id -> {{answer, ...}}")
    return {str(qid): field(entry, "answer", f"{where} question {qid}") for qid, entry in doc.items()}


@dataclasses.dataclass(frozen=True)
class ImageQATask:
    name: str
    question_files: tuple[str, ...]
    annotation_files: tuple[str, ...]
    image_folders: tuple[str, ...]
    read_answers: Callable
    instruction: str = SHORT_ANSWER
    join_on: str = "question_id"          # the question-file key the annotations are indexed by
    exact_match: bool = False              # GQA; otherwise VQA accuracy
    media_kind: str = "image"
    template: str = "vicuna_v1"
    max_new_tokens: int = 128
    open_ended: bool = False

    def load(self, data: epath.Path) -> list[Sample]:
        q_file = find_file(data, "question file", self.question_files)
        a_file = find_file(data, "annotation file", self.annotation_files)
        answers = self.read_answers(read_json(a_file, "annotation file"), str(a_file))
        finder = MediaFinder(data, self.image_folders)
        samples = []
        for number, row in enumerate(read_jsonl(q_file, "question file"), 1):
            where = f"{q_file}:{number}"
            text, image = str(field(row, "text", where)), str(field(row, "image", where))
            key = str(field(row, self.join_on, where))
            if key not in answers:
                raise DataError(f"{where}: {self.join_on} {key!r} has no entry in {a_file}")
            if SHORT_ANSWER not in text:
                text = f"{text}\n{self.instruction}"
            samples.append(Sample(id=str(field(row, "question_id", where)), question=text.split("\n")[0], text=text,
                                  media_name=image, media=finder.find([image]), answer=answers[key]))
        check_unique((s.id for s in samples), str(q_file))
        return samples

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        if self.exact_match:
            verdicts = [{"correct": gqa_correct(r["pred"], r["answer"])} for r in records]
            values = [float(v["correct"]) for v in verdicts]
        else:
            verdicts = [{"score": vqa_accuracy(r["pred"], r["answer"])} for r in records]
            values = [v["score"] for v in verdicts]
        return verdicts, {"accuracy": sum(values) / len(values) if values else 0.0, "count": len(values)}


TASKS = [
    ImageQATask("vqav2", ("questions.jsonl", "llava_vqav2_mscoco_val2014.jsonl", "llava_vqav2_mscoco_test-dev2015.jsonl"),
                ("annotations.json", "v2_mscoco_val2014_annotations.json"), ("images", "val2014", ""), vqav2_answers),
    ImageQATask("textvqa", ("questions.jsonl", "llava_textvqa_val_v051_ocr.jsonl"),
                ("annotations.json", "TextVQA_0.5.1_val.json"), ("images", "train_images", ""), textvqa_answers),
    ImageQATask("vizwiz", ("questions.jsonl", "llava_vizwiz_val.jsonl", "llava_test.jsonl"),
                ("annotations.json", "val.json"), ("images", "val", ""), vizwiz_answers,
                instruction=f"{UNANSWERABLE}\n{SHORT_ANSWER}", join_on="image"),
    ImageQATask("gqa", ("questions.jsonl", "llava_gqa_testdev_balanced.jsonl"),
                ("annotations.json", "testdev_balanced_questions.json"), ("images", ""), gqa_answers,
                exact_match=True),
]
