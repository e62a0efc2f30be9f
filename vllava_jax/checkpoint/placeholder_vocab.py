"""The vocabulary transformers needs to run a model whose `<image>`/`<video>` ids lie past its embedding.

Our model replaces placeholder ids with visual features before the embedding lookup, so the original
Video-LLaVA (32,000 rows; `<image>` = 32,000 and `<video>` = 32,001 by `original.py`) runs without
extra rows. transformers' `VideoLlavaForConditionalGeneration` looks every id up first, so that
model exported as is fails inside the embedding. transformers' own conversion of the checkpoint
(`convert_video_llava_weights_to_hf.py`) adds `<image>`, `<video>`, then `<pad>` to the tokenizer
(ids vocab, vocab + 1, vocab + 2), grows the embedding and LM head to the next multiple of 64
(32,064 rows for the 7B) and points `pad_token_id` at `<pad>`; an export does the same here.

Each new row is the mean of its matrix's old rows, where transformers draws rows at random around
that mean. With the LM head's mean row, a new column's logit is exactly the mean of the old logits:
never above the largest, so greedy decoding never picks an added token and the old tokens keep their
order. The embedding's new rows never reach the output (`<image>`/`<video>` rows are replaced by
features, `<pad>` positions are masked); the mean keeps them in range for fine-tuning. No randomness,
so an export is reproducible byte for byte.

The export also writes what `VideoLlavaProcessor.from_pretrained` reads beside the tokenizer (image,
video and processor configs) when the source has none: the original keeps them in its tower dirs.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from etils import epath

from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import CheckpointError
from vllava_jax.jsonio import read_json
from vllava_jax.processing import image as image_lib

PAD_TOKEN = "<pad>"
ROWS_MULTIPLE = 64  # transformers' conversion pads the vocabulary to this for performance
VOCAB_ROWS = (("language_model", "embed_tokens"), ("language_model", "lm_head"))


@dataclasses.dataclass(frozen=True)
class Growth:
    """`old` rows grow to `new`; the added tokens and their ids."""

    old: int
    new: int
    tokens: dict[str, int]

    def config(self, config: VideoLlavaConfig) -> VideoLlavaConfig:
        """`config` with the grown vocabulary and `pad_token_id` at `<pad>` (placeholder ids are unchanged)."""
        text = dataclasses.replace(config.text_config, vocab_size=self.new)
        return dataclasses.replace(config, text_config=text, pad_token_id=self.tokens[PAD_TOKEN])

    def rows(self, matrix: np.ndarray) -> np.ndarray:
        """A (old, dim) embedding or LM head (PyTorch layout) with `new - old` rows at the old rows' mean."""
        mean = np.mean(matrix, axis=0, dtype=np.float64).astype(matrix.dtype)
        return np.concatenate([matrix, np.broadcast_to(mean, (self.new - self.old, matrix.shape[1]))])


def growth(config: VideoLlavaConfig) -> Growth | None:
    """The growth transformers needs for `config`, or None when its placeholder ids are inside the vocabulary."""
    vocab = config.text_config.vocab_size
    image, video = config.image_token_index, config.video_token_index
    if max(image, video) < vocab:
        return None
    if sorted((image, video)) != [vocab, vocab + 1]:
        raise CheckpointError(f"image_token_index {image} and video_token_index {video}: outside a vocabulary of "
                              f"{vocab}, placeholders must be {vocab} and {vocab + 1} (the rows transformers adds)")
    new = -(-(vocab + 3) // ROWS_MULTIPLE) * ROWS_MULTIPLE
    return Growth(vocab, new, {"<image>": image, "<video>": video, PAD_TOKEN: vocab + 2})


def _write(path: epath.Path, content: dict) -> None:
    path.write_text(json.dumps(content, indent=2, ensure_ascii=False) + "\n")


def _added_token(content: str) -> dict:
    """How transformers records an `AddedToken(content, special=True, normalized=False)`."""
    return {"content": content, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
            "special": True}


def _check_free(path: epath.Path, present: dict[str, int], grown: Growth) -> None:
    """Refuse a tokenizer file that gives one of the grown tokens, or one of their ids, another meaning."""
    by_id = {i: content for content, i in present.items()}
    for content, idx in grown.tokens.items():
        if present.get(content, idx) != idx or by_id.get(idx, content) != content:
            raise CheckpointError(f"{path}: has {content!r} or id {idx} with another meaning; the export adds "
                                  f"{content!r} as id {idx}, the row it grows for it")


def add_tokens(directory: epath.Path, grown: Growth) -> None:
    """Add the grown tokens to whichever tokenizer files `directory` holds; `<pad>` becomes the pad token.

    A dir without a tokenizer (no tokenizer.model or tokenizer.json) is left alone.
    """
    if not ((directory / "tokenizer.model").exists() or (directory / "tokenizer.json").exists()):
        return
    config_file = directory / "tokenizer_config.json"
    config = read_json(config_file, CheckpointError) if config_file.exists() else {"tokenizer_class": "LlamaTokenizer"}
    decoder = {int(i): entry for i, entry in (config.get("added_tokens_decoder") or {}).items()}
    _check_free(config_file, {entry["content"]: i for i, entry in decoder.items()}, grown)
    decoder |= {idx: _added_token(content) for content, idx in grown.tokens.items()}
    config["added_tokens_decoder"] = {str(i): decoder[i] for i in sorted(decoder)}
    config |= {"pad_token": PAD_TOKEN, "padding_side": "left"}
    _write(config_file, config)

    special_map = directory / "special_tokens_map.json"
    if special_map.exists():
        _write(special_map, read_json(special_map, CheckpointError) | {"pad_token": PAD_TOKEN})
    if (directory / "added_tokens.json").exists():
        added = read_json(directory / "added_tokens.json", CheckpointError)
        _check_free(directory / "added_tokens.json", added, grown)
        _write(directory / "added_tokens.json", added | grown.tokens)
    if (directory / "tokenizer.json").exists():
        tokenizer = read_json(directory / "tokenizer.json", CheckpointError)
        added = tokenizer.get("added_tokens", [])
        _check_free(directory / "tokenizer.json", {entry["content"]: entry["id"] for entry in added}, grown)
        present = {entry["content"] for entry in added}
        tokenizer["added_tokens"] = added + [{"id": idx, **_added_token(content)}
                                             for content, idx in grown.tokens.items() if content not in present]
        _write(directory / "tokenizer.json", tokenizer)


def write_processor_files(directory: epath.Path, config: VideoLlavaConfig) -> None:
    """The image, video and processor configs `VideoLlavaProcessor` reads, each unless `directory` has it.

    The values are the CLIP transform Video-LLaVA's towers were trained with (transformers'
    `VideoLlavaImageProcessor` defaults), sized to the tower's `image_size`.
    """
    size = config.vision_config.image_size
    pixels = {
        "crop_size": {"height": size, "width": size}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": list(image_lib.OPENAI_CLIP_MEAN),
        "image_std": list(image_lib.OPENAI_CLIP_STD), "resample": 3, "rescale_factor": 1 / 255,
        "size": {"shortest_edge": size}, "processor_class": "VideoLlavaProcessor",
    }
    files = {
        "preprocessor_config.json": pixels | {"image_processor_type": "VideoLlavaImageProcessor"},
        "video_preprocessor_config.json": pixels | {"video_processor_type": "VideoLlavaVideoProcessor",
                                                    "default_to_square": False, "do_sample_frames": False},
        "processor_config.json": {"processor_class": "VideoLlavaProcessor",
                                  "patch_size": config.vision_config.patch_size,
                                  "vision_feature_select_strategy": config.vision_feature_select_strategy,
                                  "num_additional_image_tokens": 1},
    }
    for name, content in files.items():
        if not (directory / name).exists():
            _write(directory / name, content)
