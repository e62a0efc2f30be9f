"""Snapshots of the prompts each task renders: the original scripts' wording, template and
answer-format suffixes. A change here changes every benchmark number: update only on purpose."""

from __future__ import annotations

import json

import pytest

from vllava_jax.eval.runner import prompt_of
from vllava_jax.eval.tasks import registry

SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
          "detailed, and polite answers to the user's questions. ")  # vicuna_v1: the image benchmarks
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                "helpful, detailed, and polite answers to the human's questions. ")  # llava_v1: video QA


def write(path, rows, lines=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) if lines else json.dumps(rows))


def first_prompt(task_name, data):
    task = registry()[task_name]
    return prompt_of(task, task.load(data)[0])


@pytest.mark.parametrize("task", ["msvd_qa", "msrvtt_qa", "tgif_qa", "activitynet_qa"])
def test_video_qa_prompt(task, tmp_path):
    write(tmp_path / "test_q.json", [{"video_name": "x", "question": "what is the man doing", "question_id": 1}])
    write(tmp_path / "test_a.json", [{"answer": "play", "type": 0, "question_id": 1}])
    assert first_prompt(task, tmp_path) == LLAVA_SYSTEM + "USER: <video>\nwhat is the man doing ASSISTANT:"


def test_image_qa_prompts(tmp_path):
    suffix = "Answer the question using a single word or phrase."
    write(tmp_path / "vqav2/questions.jsonl", [{"question_id": 1, "image": "a.jpg", "text": f"What color?\n{suffix}"}],
          lines=True)
    write(tmp_path / "vqav2/annotations.json", {"annotations": [{"question_id": 1, "answers": [{"answer": "red"}]}]})
    assert first_prompt("vqav2", tmp_path / "vqav2") == SYSTEM + f"USER: <image>\nWhat color?\n{suffix} ASSISTANT:"

    # a question file without the instruction gets it appended, as LLaVA's released files have it
    write(tmp_path / "vizwiz/questions.jsonl", [{"question_id": 0, "image": "v.jpg", "text": "What is this?"}],
          lines=True)
    write(tmp_path / "vizwiz/annotations.json", [{"image": "v.jpg", "answers": [{"answer": "soup"}] * 10}])
    assert first_prompt("vizwiz", tmp_path / "vizwiz") == SYSTEM + (
        "USER: <image>\nWhat is this?\nWhen the provided information is insufficient, respond with 'Unanswerable'."
        f"\n{suffix} ASSISTANT:")

    ocr = "Reference OCR token: Nikon, d40"
    write(tmp_path / "textvqa/llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": f"what brand?\n{ocr}\n{suffix}"}],
        lines=True)
    write(tmp_path / "textvqa/TextVQA_0.5.1_val.json", {"data": [
        {"image_id": "003a8ae2ef43b901", "question": "What brand?", "question_id": 34602, "answers": ["nikon"] * 10}]})
    assert first_prompt("textvqa", tmp_path / "textvqa") == SYSTEM + (
        f"USER: <image>\nwhat brand?\n{ocr}\n{suffix} ASSISTANT:")

    write(tmp_path / "gqa/questions.jsonl", [{"question_id": "20", "image": "n1.jpg", "text": f"Is it red?\n{suffix}"}],
          lines=True)
    write(tmp_path / "gqa/annotations.json", {"20": {"answer": "no"}})
    assert first_prompt("gqa", tmp_path / "gqa") == SYSTEM + f"USER: <image>\nIs it red?\n{suffix} ASSISTANT:"


def test_pope_prompt(tmp_path):
    for category in ("adversarial", "popular", "random"):
        write(tmp_path / f"coco_pope_{category}.json", [{"question_id": 1, "image": "c.jpg", "label": "yes",
                                                         "text": "Is there a dog in the image?"}], lines=True)
    assert first_prompt("pope", tmp_path) == SYSTEM + (
        "USER: <image>\nIs there a dog in the image?\nAnswer the question using a single word or phrase. ASSISTANT:")


def test_scienceqa_prompt(tmp_path):
    write(tmp_path / "llava_test_CQM-A.json", [{"id": "4", "image": "4/image.png", "conversations": [
        {"from": "human", "value": "<image>\nContext: N/A\nQuestion: Which is warmer?\nOptions: (A) ice (B) tea"}]}])
    write(tmp_path / "problems.json", {"4": {"choices": ["ice", "tea"], "answer": 1}})
    assert first_prompt("sqa_img", tmp_path) == SYSTEM + (
        "USER: <image>\nContext: N/A\nQuestion: Which is warmer?\nOptions: (A) ice (B) tea\n"
        "Answer with the option's letter from the given choices directly. ASSISTANT:")
