"""LLaMA tokenizer on the `sentencepiece` package, giving the ids transformers 5's `LlamaTokenizer` gives.

transformers 5 rebuilds every LLaMA tokenizer as a byte-fallback BPE with no normalizer and a
`Metaspace` pre-tokenizer, whatever the checkpoint's `tokenizer.json` says; we reproduce that
pipeline around sentencepiece's own BPE:

- added tokens (`<s>`, `</s>`, `<image>`, `<video>`, `<pad>`, ...) are cut out of the text first
  (longest match), so a special-token string always maps to its id and is never split;
- each remaining chunk has spaces replaced by "▁" and gets a leading "▁" unless it already starts
  with one: only the chunk at the start of the text (`legacy: false`, the default), every chunk
  (`legacy: true`), or none (`add_prefix_space: false`);
- sentencepiece then encodes the chunk with its normalizer switched off (identity, no dummy
  prefix, whitespace kept), as transformers has no normalizer;
- BOS/EOS come from `tokenizer.json`'s post-processor template when the file exists (transformers
  keeps it), else from `add_bos_token`/`add_eos_token` in `tokenizer_config.json` (default: BOS
  only, LLaMA's convention).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import sentencepiece as spm
from etils import epath
from sentencepiece import sentencepiece_model_pb2

from vllava_jax.errors import ConfigError, InputError
from vllava_jax.jsonio import read_json

SPIECE_UNDERLINE = "\u2581"
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _content(token: Any) -> str | None:
    """A special token as written in the json files: a string or an AddedToken dict."""
    return token.get("content") if isinstance(token, dict) else token


def _read_json(path: epath.Path) -> dict[str, Any]:
    """An optional tokenizer file: {} when the checkpoint has none."""
    return read_json(path, ConfigError) if path.exists() else {}


class Tokenizer:
    """Text <-> ids. Build with `Tokenizer.from_pretrained(checkpoint_dir)`."""

    def __init__(self, sp_model: bytes, added_tokens: dict[str, int], special_ids: set[int],
                 strip: dict[str, tuple[bool, bool]], prepend_scheme: str, prefix_ids: list[int],
                 suffix_ids: list[int], special_tokens: dict[str, str | None], padding_side: str = "left"):
        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(sp_model)
        spec = proto.normalizer_spec
        spec.name, spec.precompiled_charsmap = "identity", b""
        spec.add_dummy_prefix = spec.remove_extra_whitespaces = False
        self.sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self.added_tokens = dict(added_tokens)
        self.added_by_id = {i: t for t, i in self.added_tokens.items()}
        self.special_ids = set(special_ids)
        self.prepend_scheme = prepend_scheme
        self.prefix_ids, self.suffix_ids = list(prefix_ids), list(suffix_ids)
        self.padding_side = padding_side
        self.special_tokens = dict(special_tokens)
        # leftmost-longest match, like tokenizers' added-vocabulary; lstrip/rstrip eat neighbouring spaces
        parts = []
        for token in sorted(self.added_tokens, key=len, reverse=True):
            lstrip, rstrip = strip.get(token, (False, False))
            parts.append((r"\s*" if lstrip else "") + f"({re.escape(token)})" + (r"\s*" if rstrip else ""))
        self._split = re.compile("|".join(parts)) if parts else None

    # ---- loading ----

    @classmethod
    def from_pretrained(cls, path: epath.PathLike, placeholders: dict[str, int] | None = None) -> Tokenizer:
        """Read `tokenizer.model` plus whichever of the transformers json files the dir has.

        `placeholders` (e.g. {"<image>": 32000}) are added as special tokens where the files lack
        them: the original Video-LLaVA tokenizer has no `<image>`/`<video>`, its model config does.
        """
        path = epath.Path(path)
        model_file = path / "tokenizer.model"
        if not model_file.exists():
            raise ConfigError(f"{model_file}: no such file; the tokenizer needs the sentencepiece model")
        sp_bytes = model_file.read_bytes()
        tok_json = _read_json(path / "tokenizer.json")
        config = _read_json(path / "tokenizer_config.json")
        special_map = _read_json(path / "special_tokens_map.json")
        sp = spm.SentencePieceProcessor(model_proto=sp_bytes)

        added: dict[str, int] = {}
        special_ids: set[int] = set()
        strip: dict[str, tuple[bool, bool]] = {}

        def add(content: str, idx: int, special: bool, lstrip=False, rstrip=False) -> None:
            added[content] = int(idx)
            strip[content] = (bool(lstrip), bool(rstrip))
            if special:
                special_ids.add(int(idx))

        for entry in tok_json.get("added_tokens", []):
            add(entry["content"], entry["id"], entry.get("special", False), entry.get("lstrip"), entry.get("rstrip"))
        for idx, entry in (config.get("added_tokens_decoder") or {}).items():
            if entry["content"] not in added:
                add(entry["content"], int(idx), entry.get("special", False), entry.get("lstrip"), entry.get("rstrip"))
        for content, idx in _read_json(path / "added_tokens.json").items():
            if content not in added:
                add(content, idx, False)

        for content, idx in (placeholders or {}).items():
            if content not in added:
                add(content, idx, True)

        special_tokens = {k: _content(config.get(k, special_map.get(k))) for k in _SPECIAL_KEYS}
        extra = (config.get("extra_special_tokens") or config.get("additional_special_tokens")
                 or special_map.get("additional_special_tokens") or [])
        if isinstance(extra, dict):  # transformers 5 may store named extra tokens
            extra = list(extra.values())
        for token in [*special_tokens.values(), *map(_content, extra)]:
            if token is None:
                continue
            if token not in added:
                idx = sp.piece_to_id(token)
                if sp.id_to_piece(idx) != token:
                    raise ConfigError(f"{path}: special token {token!r} is neither an added token nor in tokenizer.model")
                add(token, idx, True)
            special_ids.add(added[token])
        vocab = sp.get_piece_size()
        for token, idx in added.items():
            if idx < vocab and sp.id_to_piece(idx) != token:
                raise ConfigError(f"{path}: added token {token!r} has id {idx}, which tokenizer.model gives to "
                                  f"{sp.id_to_piece(idx)!r}")

        if config.get("add_prefix_space") is False:
            scheme = "never"
        else:
            scheme = "always" if config.get("legacy", False) else "first"

        if tok_json.get("post_processor"):
            prefix, suffix = _template_ids(tok_json["post_processor"], added, path / "tokenizer.json")
        else:
            bos, eos = special_tokens["bos_token"], special_tokens["eos_token"]
            prefix = [added[bos]] if config.get("add_bos_token", True) and bos else []
            suffix = [added[eos]] if config.get("add_eos_token", False) and eos else []
        return cls(sp_bytes, added, special_ids, strip, scheme, prefix, suffix, special_tokens,
                   padding_side=config.get("padding_side", "left"))

    # ---- ids ----

    def token_id(self, token: str) -> int:
        if token in self.added_tokens:
            return self.added_tokens[token]
        idx = self.sp.piece_to_id(token)
        if self.sp.id_to_piece(idx) != token:
            raise InputError(f"token {token!r} is not in this tokenizer's vocabulary")
        return idx

    def _special_id(self, name: str) -> int | None:
        token = self.special_tokens.get(name)
        return None if token is None else self.token_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int | None:
        return self._special_id("eos_token")

    @property
    def pad_token_id(self) -> int | None:
        return self._special_id("pad_token")

    # ---- encoding ----

    def _encode_chunk(self, chunk: str, at_start: bool) -> list[int]:
        chunk = chunk.replace(" ", SPIECE_UNDERLINE)
        prepend = self.prepend_scheme == "always" or (self.prepend_scheme == "first" and at_start)
        if prepend and not chunk.startswith(SPIECE_UNDERLINE):
            chunk = SPIECE_UNDERLINE + chunk
        return self.sp.encode(chunk)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = []
        pos = 0
        matches = self._split.finditer(text) if self._split else ()
        for m in matches:
            if m.start() > pos:
                ids += self._encode_chunk(text[pos:m.start()], at_start=pos == 0)
            ids.append(self.added_tokens[m.group(m.lastindex)])
            pos = m.end()
        if pos < len(text):
            ids += self._encode_chunk(text[pos:], at_start=pos == 0)
        return self.prefix_ids + ids + self.suffix_ids if add_special_tokens else ids

    def __call__(self, text: str | Sequence[str], padding: bool | str = False, max_length: int | None = None,
                 padding_side: str | None = None, add_special_tokens: bool = True) -> dict[str, np.ndarray]:
        """Encode a batch; `padding=True`/"longest" pads to the longest row, "max_length" to `max_length`.

        Rows of different lengths without padding are an error: the result is a rectangular array.
        """
        texts = [text] if isinstance(text, str) else list(text)
        rows = [self.encode(t, add_special_tokens) for t in texts]
        longest = max((len(r) for r in rows), default=0)
        if padding == "max_length":
            if max_length is None:
                raise InputError("padding='max_length' needs max_length")
            width = max_length
        elif padding:
            width = longest
        else:
            if len({len(r) for r in rows}) > 1:
                raise InputError(f"rows have {sorted({len(r) for r in rows})} tokens; pass padding=True")
            width = longest
        if longest > width:
            raise InputError(f"a row has {longest} tokens, more than max_length={width}")
        pad_id = self.pad_token_id
        if pad_id is None and any(len(r) < width for r in rows):
            raise InputError("this tokenizer has no pad_token (tokenizer_config.json), so rows cannot be padded")
        side = padding_side or self.padding_side
        ids = np.full((len(rows), width), pad_id if pad_id is not None else 0, np.int64)
        mask = np.zeros((len(rows), width), np.int64)
        for i, row in enumerate(rows):
            sl = slice(width - len(row), width) if side == "left" else slice(0, len(row))
            ids[i, sl] = row
            mask[i, sl] = 1
        return {"input_ids": ids, "attention_mask": mask}

    # ---- decoding ----

    def decode(self, ids: Sequence[int] | np.ndarray, skip_special_tokens: bool = False) -> str:
        """Pieces joined, "▁" -> space, byte pieces fused into UTF-8, one leading space stripped."""
        out, pending = [], bytearray()
        for idx in np.asarray(ids, np.int64).reshape(-1).tolist():
            if skip_special_tokens and idx in self.special_ids:
                continue
            if idx in self.added_by_id:
                piece = self.added_by_id[idx]
            elif 0 <= idx < self.sp.get_piece_size():
                piece = self.sp.id_to_piece(idx)
                if self.sp.is_byte(idx):
                    pending.append(int(piece[3:5], 16))
                    continue
            else:
                continue  # transformers skips ids it has no token for
            out.append(_flush_bytes(pending))
            out.append(piece.replace(SPIECE_UNDERLINE, " "))
        out.append(_flush_bytes(pending))
        text = "".join(out)
        if self.prepend_scheme != "never" and text.startswith(" "):
            text = text[1:]
        return text

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(row, skip_special_tokens) for row in rows]


def _flush_bytes(pending: bytearray) -> str:
    """Byte-fallback pieces: valid UTF-8 as text, otherwise one U+FFFD per byte (tokenizers' rule)."""
    if not pending:
        return ""
    try:
        text = pending.decode("utf-8")
    except UnicodeDecodeError:
        text = "\ufffd" * len(pending)
    pending.clear()
    return text


def _template_ids(post: dict[str, Any], added: dict[str, int], source: epath.Path) -> tuple[list[int], list[int]]:
    """Ids before and after the text in a `TemplateProcessing` post-processor's single-sequence template."""
    processors = post.get("processors", [post]) if post.get("type") == "Sequence" else [post]
    template = next((p for p in processors if p.get("type") == "TemplateProcessing"), None)
    if template is None:
        return [], []
    prefix, suffix, seen_text = [], [], False
    for item in template["single"]:
        if "Sequence" in item:
            seen_text = True
            continue
        token = item["SpecialToken"]["id"]
        ids = template.get("special_tokens", {}).get(token, {}).get("ids")
        if ids is None:
            if token not in added:
                raise ConfigError(f"{source}: post_processor uses {token!r}, which is not an added token")
            ids = [added[token]]
        (suffix if seen_text else prefix).extend(ids)
    return prefix, suffix
