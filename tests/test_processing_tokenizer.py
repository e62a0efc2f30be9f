"""Our sentencepiece tokenizer and Processor against transformers on the same checkpoint dir."""

from __future__ import annotations

import numpy as np
import pytest

from tests import media
from vllava_jax.errors import ConfigError, InputError
from vllava_jax.processing import conversation
from vllava_jax.processing.tokenizer import Tokenizer

PROMPTS = [
    "Hello world",
    "USER: <video>\nWhat is happening in this video? ASSISTANT:",
    "USER: <image>\nDescribe the image. ASSISTANT: There are 3 cats.</s>USER: And dogs? ASSISTANT:",
    "Café naïve façade — Größe, 日本語のテキスト, Ελληνικά",
    "emoji 😀🎉👍🏽 and flags 🇫🇷",
    "digits 1234567890 and 3.14159, 2024-05-17",
    "<image><video>back to back, <image>\n<image>\nmany",
    "<s>starts with bos</s> and <pad> mid-text <unk>",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\n\nand\r\nCRLF",
    "",
    "\u2581literal metaspace",
    "<imagine> is not <image",
    conversation.get_template("llava_v1").prompt(["What is it?", "A cat.", "Is it happy?"], media=["<video>"]),
    conversation.get_template("hf").prompt(["Why?"], media=["<image>", "<video>"]),
]


@pytest.fixture(scope="module", params=[False, True], ids=["legacy_false", "legacy_true"])
def checkpoint(request, tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    hf_tok, _ = media.save_tokenizer_checkpoint(path, legacy=request.param)
    return path, hf_tok


@pytest.mark.parametrize("text", PROMPTS)
def test_encode_matches_transformers(checkpoint, text):
    path, hf_tok = checkpoint
    ours = Tokenizer.from_pretrained(path)
    assert ours.encode(text) == hf_tok(text)["input_ids"]
    assert ours.encode(text, add_special_tokens=False) == hf_tok(text, add_special_tokens=False)["input_ids"]


def test_decode_matches_transformers(checkpoint):
    path, hf_tok = checkpoint
    ours = Tokenizer.from_pretrained(path)
    rng = np.random.default_rng(0)
    rows = [hf_tok(t)["input_ids"] for t in PROMPTS]
    rows.append(rng.integers(0, len(hf_tok), 40).tolist())  # random ids: broken byte sequences, specials
    rows.append([1, 240, 159, 152, 128])  # a partial then a complete 4-byte sequence
    for row in rows:
        for skip in (False, True):
            assert ours.decode(row, skip_special_tokens=skip) == hf_tok.decode(row, skip_special_tokens=skip)


def test_batch_padding_matches_transformers(checkpoint):
    path, hf_tok = checkpoint
    ours = Tokenizer.from_pretrained(path)
    batch = PROMPTS[:5]
    for side in ("left", "right"):
        want = hf_tok(batch, padding=True, padding_side=side, return_tensors="np")
        got = ours(batch, padding=True, padding_side=side)
        np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
        np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    assert ours.padding_side == hf_tok.padding_side == "left"
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        hf_tok.bos_token_id, hf_tok.eos_token_id, hf_tok.pad_token_id)


def test_special_tokens_never_split(checkpoint):
    path, hf_tok = checkpoint
    ours = Tokenizer.from_pretrained(path)
    for token in ("<image>", "<video>", "<pad>", "<s>", "</s>", "<unk>"):
        assert ours.encode(token, add_special_tokens=False) == [hf_tok.convert_tokens_to_ids(token)]


def test_without_tokenizer_json_uses_tokenizer_config(tmp_path):
    """A dir with only tokenizer.model + tokenizer_config.json (+ added_tokens.json): the slow-tokenizer layout."""
    import json

    hf_tok, _ = media.save_tokenizer_checkpoint(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    extra = config.pop("extra_special_tokens")
    config["add_bos_token"], config["add_eos_token"] = True, True
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "added_tokens.json").write_text(json.dumps({t: hf_tok.convert_tokens_to_ids(t) for t in [*extra, "<pad>"]}))
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"additional_special_tokens": extra}))
    ours = Tokenizer.from_pretrained(tmp_path)
    text = PROMPTS[2]
    assert ours.encode(text) == hf_tok(text)["input_ids"] + [hf_tok.eos_token_id]


def test_missing_model_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer.model"):
        Tokenizer.from_pretrained(tmp_path)


def test_ragged_batch_without_padding_is_an_error(checkpoint):
    ours = Tokenizer.from_pretrained(checkpoint[0])
    with pytest.raises(InputError, match="padding"):
        ours(["a", "a much longer text"])


def test_templates():
    v1 = conversation.get_template("vicuna_v1")
    assert v1.prompt(["Q1", "A1", "Q2"], media=["<image>"]) == (
        conversation.VICUNA_SYSTEM + " USER: <image>\nQ1 ASSISTANT: A1</s>USER: Q2 ASSISTANT:")
    assert conversation.get_template("llava_v1").prompt(["Q"]) == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: Q ASSISTANT:")  # LLaVA's conv_llava_v1
    assert conversation.get_template("hf").prompt(["What happens?"], media=["<video>"]) == (
        "USER: <video>\nWhat happens? ASSISTANT:")
    assert conversation.get_template("plain").prompt(["ignored", "a cat"], media=["<image>"]) == "<image>a cat\n"
    with pytest.raises(InputError, match="unknown conversation template"):
        conversation.get_template("nope")


def test_original_tokenizer_without_placeholders_takes_the_config_ids(tmp_path):
    """The original Video-LLaVA tokenizer has no <image>/<video>; a converted checkpoint's config names their ids."""
    import json

    from transformers import LlamaTokenizer

    import vllava_jax

    (tmp_path / "tokenizer.model").write_bytes(media.train_sentencepiece())
    plain = LlamaTokenizer.from_pretrained(tmp_path, legacy=False)
    plain.save_pretrained(tmp_path)
    vocab = len(plain)
    media.save_tokenizer_checkpoint(tmp_path / "ref")  # only for a config.json to adapt
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    config.update(image_token_index=vocab, video_token_index=vocab + 1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    processor = vllava_jax.Processor.from_pretrained(tmp_path)
    ids = processor(text="USER: <image>\nhi ASSISTANT:", images=[np.zeros((224, 224, 3), np.uint8)])["input_ids"][0]
    slots = vllava_jax.VideoLlavaConfig.from_json(tmp_path / "config.json").image_seq_length
    # the oracle: the same tokenizer with <image> added as a special token, which lands on id `vocab`
    plain.add_special_tokens({"additional_special_tokens": ["<image>"]})
    assert plain.convert_tokens_to_ids("<image>") == vocab
    expected = plain("USER: " + "<image>" * slots + "\nhi ASSISTANT:")["input_ids"]
    assert ids.tolist() == expected
