"""A LLaMA-style tokenizer for the shapes world, written without transformers.

A sentencepiece BPE trained on the world's sentences and the chat templates' system prompts
(byte fallback, so any text still encodes), plus the json files `Tokenizer.from_pretrained`
reads: `<image>`, `<video>`, `<pad>` are added special tokens right after the sentencepiece
vocabulary, BOS is prepended, `legacy` is off (as Video-LLaVA-7B-hf).
"""

from __future__ import annotations

import io
import json

import sentencepiece as spm
from etils import epath

from data_pipelines.shapes.world import corpus
from vllava_jax.processing.conversation import LLAVA_SYSTEM, VICUNA_SYSTEM

ADDED = ("<image>", "<video>", "<pad>")


def train_sentencepiece(sp_vocab_size: int) -> bytes:
    sentences = corpus() + [LLAVA_SYSTEM, VICUNA_SYSTEM, "USER: ASSISTANT:"]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences * 10), model_writer=buf, vocab_size=sp_vocab_size, model_type="bpe",
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, hard_vocab_limit=False, minloglevel=2)
    return buf.getvalue()


def write_tokenizer(directory: epath.PathLike, sp_vocab_size: int) -> dict[str, int]:
    """Write the tokenizer files into `directory`; returns the added tokens' ids (first one = `sp_vocab_size`).

    Raises ValueError when sentencepiece could not fill `sp_vocab_size` pieces from the corpus, as the
    placeholder ids (and the model config naming them) assume it did.
    """
    directory = epath.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = train_sentencepiece(sp_vocab_size)
    size = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if size != sp_vocab_size:
        raise ValueError(f"sentencepiece made {size} pieces, not {sp_vocab_size}: pick a vocabulary size the "
                         "corpus supports")
    (directory / "tokenizer.model").write_bytes(model)
    ids = {token: sp_vocab_size + i for i, token in enumerate(ADDED)}
    specials = {0: "<unk>", 1: "<s>", 2: "</s>"} | {i: t for t, i in ids.items()}
    config = {
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
        "padding_side": "left", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "additional_special_tokens": ["<image>", "<video>"],
        "added_tokens_decoder": {str(i): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                          "normalized": False, "single_word": False} for i, t in specials.items()},
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special_map = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                   "additional_special_tokens": ["<image>", "<video>"]}
    (directory / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    (directory / "added_tokens.json").write_text(json.dumps(ids, indent=2))
    return ids
