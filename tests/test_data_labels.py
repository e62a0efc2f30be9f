"""Data pipeline pieces without Grain: labels, turns, visual slots, truncation, batch layout, annotation errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_pipelines.annotations import load_annotations
from data_pipelines.bad_data import SkipSample
from vllava_jax.errors import DataError
from data_pipelines.batching import BatchSpec, make_batch
from data_pipelines.conversations import normalize_turns
from data_pipelines.labels import IGNORE, tokenize_conversation
from data_pipelines.slots import expand_slots, truncate
from tests.media import save_tokenizer_checkpoint
from vllava_jax.processing.conversation import get_template
from vllava_jax.processing.processor import Processor


@pytest.fixture(scope="session")
def data_checkpoint(tmp_path_factory):
    """A tokenizer + config dir at 28 px: 4 slots per image, 8 x 5 = 40 per video."""
    path = tmp_path_factory.mktemp("data_ckpt")
    save_tokenizer_checkpoint(path, image_size=28)
    return path


@pytest.fixture(scope="module")
def proc(data_checkpoint):
    return Processor.from_pretrained(data_checkpoint)


def _pieces(proc, ids):
    tok = proc.tokenizer
    return [tok.added_by_id.get(int(i)) or tok.sp.id_to_piece(int(i)) for i in ids]


def test_labels_multi_turn_llava_v1_token_by_token(proc):
    turns = ["What is happening in this video?", "A man plays.", "Why is the sky blue?", "Because of Rayleigh."]
    ids, labels = tokenize_conversation(proc.tokenizer, get_template("llava_v1"), turns, ["<video>"])
    pieces = _pieces(proc, ids)
    # hand-written expectation: the answers as tokenized in context (leading "▁" included) plus </s>
    answer1 = ["▁A", "▁", "man", "▁p", "l", "ays", ".", "</s>"]
    answer2 = ["▁", "Be", "ca", "us", "e", "▁of", "▁R", "ay", "le", "igh", ".", "</s>"]
    assert pieces[-len(answer2):] == answer2
    end1 = pieces.index("</s>") + 1
    assert pieces[end1 - len(answer1):end1] == answer1
    expected = np.full(len(ids), IGNORE)
    expected[end1 - len(answer1):end1] = ids[end1 - len(answer1):end1]
    expected[-len(answer2):] = ids[-len(answer2):]
    np.testing.assert_array_equal(labels, expected)
    # everything masked is the system prompt, the roles, the questions and the placeholder
    assert pieces[0] == "<s>" and "<video>" in pieces
    assert pieces[end1 - len(answer1) - 5:end1 - len(answer1)] == ["▁A", "SS", "IST", "ANT", ":"]
    assert proc.tokenizer.decode(ids) == get_template("llava_v1").prompt(turns, ["<video>"]).join(["<s> ", ""])


def test_labels_plain_template_target_caption_and_newline(proc):
    ids, labels = tokenize_conversation(proc.tokenizer, get_template("plain"), ["ignored question", "A man."],
                                        ["<image>"])
    assert _pieces(proc, ids) == ["<s>", "<image>", "A", "▁", "man", ".", "<0x0A>"]
    np.testing.assert_array_equal(labels, [IGNORE, IGNORE, *ids[2:]])


def test_normalize_turns():
    h = lambda v: {"from": "human", "value": v}  # noqa: E731
    g = lambda v: {"from": "gpt", "value": v}  # noqa: E731
    turns, media = normalize_turns([g("hi"), h("q <image>\n"), g("a"), h("dangling")], "image")
    assert (turns, media) == (["q", "a"], ["<image>"])
    assert normalize_turns([h("q"), g("a")], "video") == (["q", "a"], ["<video>"])  # placeholder added
    assert normalize_turns([h("q"), g("a")], "") == (["q", "a"], [])
    for turns, kind, reason in [([h("q")], "", "no_gpt_turn"), ([h("q"), h("q2"), g("a")], "", "bad_conversation"),
                                ([h("<image> q"), g("a")], "", "bad_conversation"),
                                ([h("<video> q"), g("a")], "image", "bad_conversation"),
                                ([h("<image><image> q"), g("a")], "image", "bad_conversation")]:
        with pytest.raises(SkipSample) as e:
            normalize_turns(turns, kind)
        assert e.value.reason == reason


def test_slots_expand_and_truncation_never_splits_a_visual_block():
    image, video = 7, 8
    ids = np.array([1, image, 3, 4, 5, 6], np.int32)
    labels = np.array([IGNORE, IGNORE, IGNORE, 4, 5, 6], np.int32)
    ids2, labels2 = expand_slots(ids, labels, {image: 4, video: 40})
    assert (ids2 == image).sum() == 4 and len(ids2) == 9 and (labels2[:5] == IGNORE).all()
    np.testing.assert_array_equal(ids2[5:], [3, 4, 5, 6])
    cut, cut_labels = truncate(ids2, labels2, 7, (image, video))
    np.testing.assert_array_equal(cut, ids2[:7])
    assert (cut == image).sum() == 4
    for length, reason in [(2, "visual_exceeds_max_length"), (4, "visual_exceeds_max_length"),
                           (5, "no_target_within_max_length"), (6, "no_target_within_max_length")]:
        with pytest.raises(SkipSample) as e:
            truncate(ids2, labels2, length, (image, video))
        assert e.value.reason == reason
    assert truncate(ids2, labels2, 9, (image, video))[0] is ids2


def _example(n, images=0, videos=0, spec=None):
    s = spec.image_size
    return {"input_ids": np.arange(1, n + 1, dtype=np.int32), "labels": np.arange(1, n + 1, dtype=np.int32),
            "images": np.full((images, 3, s, s), n, np.float32),
            "videos": np.full((videos, spec.num_frames, 3, s, s), n, np.float32)}


def test_make_batch_layout_segments_positions_and_per_row_media():
    spec = BatchSpec(rows=3, max_length=10, images_per_row=2, videos_per_row=1, num_frames=2, image_size=4, pad_id=0)
    rows = [[_example(3, images=1, spec=spec), _example(4, videos=1, spec=spec), _example(2, images=1, spec=spec)],
            [_example(5, images=1, spec=spec)]]
    b = make_batch(rows, spec)
    np.testing.assert_array_equal(b["segment_ids"][0], [1, 1, 1, 2, 2, 2, 2, 3, 3, 0])
    np.testing.assert_array_equal(b["positions"][0], [0, 1, 2, 0, 1, 2, 3, 0, 1, 0])
    np.testing.assert_array_equal(b["attention_mask"], b["segment_ids"] > 0)
    assert (b["segment_ids"][2] == 0).all() and (b["labels"][2] == IGNORE).all()
    # each row's media in that row's slot order, unused entries zero and marked invalid
    assert b["pixel_values_images"][:, :, 0, 0, 0].tolist() == [[3, 2], [5, 0], [0, 0]]
    assert b["image_valid"].tolist() == [[True, True], [True, False], [False, False]]
    assert b["pixel_values_videos"][:, :, 0, 0, 0, 0].tolist() == [[4], [0], [0]]
    assert b["video_valid"].tolist() == [[True], [False], [False]]
    assert b["pixel_values_videos"].shape == (3, 1, 2, 3, 4, 4)


def test_malformed_annotation_files_name_file_and_entry(tmp_path):
    cases = {
        "bad.json": ("[{\"id\": 1,", "bad.json: not valid JSON"),
        "notlist.json": (json.dumps({"id": 1}), "expected a JSON list"),
        "entry.json": (json.dumps([{"id": 0, "conversations": []}, "oops"]), "entry.json entry 1: expected an object"),
        "noconv.json": (json.dumps([{"id": 0, "conversations": []}, {"id": 1}]), "noconv.json entry 1: 'conversations'"),
        "role.json": (json.dumps([{"conversations": [{"from": "bot", "value": "x"}]}]), "entry 0: conversations[0]"),
        "both.json": (json.dumps([{"image": "a", "video": "b", "conversations": []}]), "entry 0: has both"),
        "lines.jsonl": ('{"conversations": []}\n{"conversations": [}\n', "lines.jsonl line 2: not valid JSON"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=message.replace("[", r"\[").replace("(", r"\(")):
            load_annotations(tmp_path / name)
    with pytest.raises(DataError, match="no such annotation file"):
        load_annotations(tmp_path / "missing.json")
