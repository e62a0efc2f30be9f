"""Short-answer image QA as LLaVA-1.5's model_vqa_loader.py runs it (Video-LLaVA uses its scripts):
a LLaVA question JSONL `{question_id, image, text}` whose `text` already ends with the answer-format
instruction (we append it when a file lacks it), the `vicuna_v1` template, greedy, 128 new tokens.
Each benchmark reads its files as published and scores as its official script does:

- VQAv2: `llava_vqav2_mscoco_test-dev2015.jsonl` (images in `test2015/`) is scored by the server:
  the run writes `submission.json` as convert_vqav2_for_submission.py does, over the full question
  list of `llava_vqav2_mscoco_test2015.jsonl` when it is there. With the official val annotations
  (`v2_mscoco_val2014_annotations.json`, `{"annotations": [{question_id, answers: [{answer, answer_id}]}]}`)
  it also scores locally (`metrics.vqav2`).
- TextVQA: `llava_textvqa_val_v051_ocr.jsonl`, whose `question_id` is the image id, joined with
  `TextVQA_0.5.1_val.json` (`{"data": [{image_id, question, question_id, answers}]}`) by (image id,
  lower-cased question) as eval_textvqa.py joins them (`metrics.textvqa`); images in `train_images/`.
- VizWiz: `llava_test.jsonl` (images in `test/`) is scored by the server from `submission.json`
  (convert_vizwiz_for_submission.py's `[{image, answer}]`); with the val split's `val.json`
  (`[{image, question, answers: [{answer}]}]`) it also scores locally (`metrics.vizwiz`). Without a
  question file, the questions of `val.json` are asked with LLaVA's VizWiz instructions.
- GQA: `llava_gqa_testdev_balanced.jsonl` + `testdev_balanced_questions.json` (`{question_id:
  {answer, ...}}`; in DATA or DATA/data, images in `images/` or `data/images/`), exact match after
  convert_gqa_for_eval.py (`metrics.gqa`).
"""

from __future__ import annotations

import dataclasses

from etils import epath

from vllava_jax.eval.metrics.gqa import gqa_correct
from vllava_jax.eval.metrics.textvqa import prompt_question, textvqa_accuracy
from vllava_jax.eval.metrics.vizwiz import vizwiz_accuracy, vizwiz_submission
from vllava_jax.eval.metrics.vqav2 import vqav2_accuracy, vqav2_submission
from vllava_jax.eval.tasks import MediaFinder, Sample, check_unique, field, find_file, read_json, read_jsonl
from vllava_jax.errors import DataError

SHORT_ANSWER = "Answer the question using a single word or phrase."
UNANSWERABLE = "When the provided information is insufficient, respond with 'Unanswerable'."


@dataclasses.dataclass(frozen=True)
class Question:
    """One row of a LLaVA question JSONL."""
    where: str
    question_id: object     # as the file has it (an int for VQAv2 and VizWiz, the image id for TextVQA)
    image: str
    text: str               # the user turn: the file's text, with the instruction appended if missing


def optional_file(data: epath.Path, names: tuple[str, ...]) -> epath.Path | None:
    return next((data / n for n in names if (data / n).exists()), None)


def read_questions(q_file: epath.Path, instruction: str) -> list[Question]:
    out = []
    for number, row in enumerate(read_jsonl(q_file, "question file"), 1):
        where = f"{q_file}:{number}"
        text = str(field(row, "text", where))
        if SHORT_ANSWER not in text:
            text = f"{text}\n{instruction}"
        out.append(Question(where, field(row, "question_id", where), str(field(row, "image", where)), text))
    return out


@dataclasses.dataclass(frozen=True)
class ShortAnswerTask:
    """What the short-answer benchmarks share; subclasses read their files and pick the metric."""
    name: str
    question_files: tuple[str, ...]
    annotation_files: tuple[str, ...]
    image_folders: tuple[str, ...]
    test_question_file: str = ""   # the server-scored split's questions: never joined with annotations
    media_kind: str = "image"
    template: str = "vicuna_v1"
    max_new_tokens: int = 128
    open_ended: bool = False

    def annotation_file(self, data: epath.Path, q_file: epath.Path | None) -> epath.Path | None:
        """The optional annotation file; none for the test questions, even with val annotations beside them."""
        if q_file is not None and q_file.name == self.test_question_file:
            return None
        return optional_file(data, self.annotation_files)

    def accuracy(self, pred: str, answer) -> float:
        raise NotImplementedError

    def sample(self, finder: MediaFinder, q: Question, sample_id: str, answer) -> Sample:
        return Sample(id=sample_id, question=q.text.split("\n")[0], text=q.text, media_name=q.image,
                      media=finder.find([q.image]), answer=answer, extra={"question_id": q.question_id})

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        """Local accuracy when every record has ground truth; otherwise the split is server-scored."""
        if any(r["answer"] is None for r in records):
            return [{} for _ in records], {"count": len(records), "server_scored": True}
        verdicts = [{"score": float(self.accuracy(r["pred"], r["answer"]))} for r in records]
        values = [v["score"] for v in verdicts]
        return verdicts, {"accuracy": sum(values) / len(values) if values else 0.0, "count": len(values)}

    def submission(self, records: list[dict], data: epath.Path) -> list | None:
        """The upload file the benchmark's server takes, or None when it has none."""
        return None


@dataclasses.dataclass(frozen=True)
class VQAv2Task(ShortAnswerTask):
    full_question_file: str = "llava_vqav2_mscoco_test2015.jsonl"

    def load(self, data: epath.Path) -> list[Sample]:
        q_file = find_file(data, "question file", self.question_files)
        a_file = self.annotation_file(data, q_file)
        answers = None
        if a_file is not None:
            doc = read_json(a_file, "annotation file")
            answers = {str(field(a, "question_id", str(a_file))): field(a, "answers", str(a_file))
                       for a in field(doc, "annotations", str(a_file))}
        finder = MediaFinder(data, self.image_folders)
        samples = []
        for q in read_questions(q_file, SHORT_ANSWER):
            qid = str(q.question_id)
            if answers is not None and qid not in answers:
                raise DataError(f"{q.where}: question_id {qid!r} has no entry in {a_file}")
            samples.append(self.sample(finder, q, qid, None if answers is None else answers[qid]))
        check_unique((s.id for s in samples), str(q_file))
        return samples

    def accuracy(self, pred: str, answer) -> float:
        return vqav2_accuracy(pred, answer)

    def submission(self, records: list[dict], data: epath.Path) -> list:
        full = data / self.full_question_file
        ids = ([field(row, "question_id", str(full)) for row in read_jsonl(full, "question file")] if full.exists()
               else [r["extra"]["question_id"] for r in records])
        return vqav2_submission({r["id"]: r["pred"] for r in records}, ids)


@dataclasses.dataclass(frozen=True)
class TextVQATask(ShortAnswerTask):
    def load(self, data: epath.Path) -> list[Sample]:
        q_file = find_file(data, "question file", self.question_files)
        a_file = find_file(data, "annotation file", self.annotation_files)
        where = str(a_file)
        by_image_question = {}  # eval_textvqa.py's dict: a repeated (image, question) keeps the last entry
        for a in field(read_json(a_file, "annotation file"), "data", where):
            key = (str(field(a, "image_id", where)), str(field(a, "question", where)).lower())
            by_image_question[key] = a
        finder = MediaFinder(data, self.image_folders)
        samples, seen = [], {}
        for q in read_questions(q_file, SHORT_ANSWER):
            question = prompt_question(q.text)
            if question is None:
                raise DataError(f"{q.where}: text is not in a layout eval_textvqa.py reads (question, optional "
                                "'Reference OCR token:' line, instruction)")
            key = (str(q.question_id), question)
            if key not in by_image_question:
                raise DataError(f"{q.where}: no entry in {a_file} for image_id {key[0]!r} and question {key[1]!r}")
            annotation = by_image_question[key]
            sample_id = str(annotation.get("question_id", f"{key[0]}:{key[1]}"))
            seen[sample_id] = seen.get(sample_id, 0) + 1
            if seen[sample_id] > 1:  # the same question asked twice of one image: both are scored
                sample_id = f"{sample_id}#{seen[sample_id]}"
            samples.append(self.sample(finder, q, sample_id, field(annotation, "answers", where)))
        return samples

    def accuracy(self, pred: str, answer) -> float:
        return textvqa_accuracy(pred, answer)


@dataclasses.dataclass(frozen=True)
class VizWizTask(ShortAnswerTask):
    def load(self, data: epath.Path) -> list[Sample]:
        q_file = optional_file(data, self.question_files)
        a_file = self.annotation_file(data, q_file)
        if q_file is None and a_file is None:
            raise DataError(f"{data}: no question file (looked for {', '.join(self.question_files)}) and no "
                            f"annotation file ({', '.join(self.annotation_files)})")
        answers = None
        if a_file is not None:
            doc = read_json(a_file, "annotation file")
            if not isinstance(doc, list):
                raise DataError(f"{a_file}: expected VizWiz's JSON list of {{image, question, answers}} entries")
            answers = {str(field(a, "image", str(a_file))): field(a, "answers", str(a_file)) for a in doc}
        if q_file is not None:
            questions = read_questions(q_file, f"{UNANSWERABLE}\n{SHORT_ANSWER}")
        else:  # the val split as VizWiz publishes it
            questions = [Question(f"{a_file} entry {i}", field(a, "image", str(a_file)), str(a["image"]),
                                  f"{field(a, 'question', str(a_file))}\n{UNANSWERABLE}\n{SHORT_ANSWER}")
                         for i, a in enumerate(read_json(a_file, "annotation file"))]
        finder = MediaFinder(data, self.image_folders)
        samples = []
        for q in questions:
            if answers is not None and q.image not in answers:
                raise DataError(f"{q.where}: image {q.image!r} has no entry in {a_file}")
            samples.append(self.sample(finder, q, str(q.question_id), None if answers is None else answers[q.image]))
        check_unique((s.id for s in samples), str(q_file or a_file))
        return samples

    def accuracy(self, pred: str, answer) -> float:
        return vizwiz_accuracy(pred, answer)

    def submission(self, records: list[dict], data: epath.Path) -> list:
        return vizwiz_submission([(r["media_name"], r["pred"]) for r in records])


@dataclasses.dataclass(frozen=True)
class GQATask(ShortAnswerTask):
    def load(self, data: epath.Path) -> list[Sample]:
        q_file = find_file(data, "question file", self.question_files)
        a_file = find_file(data, "annotation file", self.annotation_files)
        doc = read_json(a_file, "annotation file")
        if not isinstance(doc, dict):
            raise DataError(f"{a_file}: expected GQA's JSON object question_id -> {{answer, ...}}")
        finder = MediaFinder(data, self.image_folders)
        samples = []
        for q in read_questions(q_file, SHORT_ANSWER):
            qid = str(q.question_id)
            if qid not in doc:
                raise DataError(f"{q.where}: question_id {qid!r} has no entry in {a_file}")
            samples.append(self.sample(finder, q, qid, field(doc[qid], "answer", f"{a_file} question {qid}")))
        check_unique((s.id for s in samples), str(q_file))
        return samples

    def accuracy(self, pred: str, answer) -> float:
        return float(gqa_correct(pred, answer))


TASKS = [
    VQAv2Task("vqav2", ("llava_vqav2_mscoco_test-dev2015.jsonl", "llava_vqav2_mscoco_val2014.jsonl", "questions.jsonl"),
              ("v2_mscoco_val2014_annotations.json", "annotations.json"), ("test2015", "val2014", "images", ""),
              test_question_file="llava_vqav2_mscoco_test-dev2015.jsonl"),
    TextVQATask("textvqa", ("llava_textvqa_val_v051_ocr.jsonl", "questions.jsonl"),
                ("TextVQA_0.5.1_val.json", "annotations.json"), ("train_images", "images", "")),
    VizWizTask("vizwiz", ("llava_test.jsonl", "llava_vizwiz_val.jsonl", "questions.jsonl"),
               ("val.json", "annotations.json"), ("test", "val", "images", ""), test_question_file="llava_test.jsonl"),
    GQATask("gqa", ("llava_gqa_testdev_balanced.jsonl", "questions.jsonl"),
            ("testdev_balanced_questions.json", "data/testdev_balanced_questions.json", "annotations.json"),
            ("images", "data/images", "")),
]
