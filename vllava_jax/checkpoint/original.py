"""The original Video-LLaVA layout (PKU-YuanGroup `Video-LLaVA-7B`): key renaming and config translation.

Its weights are the transformers layout under other names, so reading them is `hf.plan` with a
renaming in front. Its config.json is LLaVA's: LLaMA fields at top level plus `mm_*` fields that
name the towers (`LanguageBind/LanguageBind_Image`, `LanguageBind/LanguageBind_Video_merge`); a
tower's sizes come from its own config.json when the name resolves to a local dir, else from
LanguageBind's published ViT-L/14 settings. The weights decide whether the video tower has
temporal attention (and for how many frames): its `temporal_*` tensors are kept, never dropped.

Placeholder ids: the original's tokenizer has no <image>/<video> tokens (it splices
IMAGE_TOKEN_INDEX = -200 in at runtime). Our model replaces placeholder ids before the embedding
lookup and accepts exactly the two placeholder ids outside the vocabulary, so unless the
checkpoint's added_tokens.json names them, <image> = vocab_size and <video> = vocab_size + 1:
no embedding row is added and the logits keep the original's width. (An export to transformers,
which looks every id up, adds the rows: `placeholder_vocab`.)
"""

from __future__ import annotations

import json
import re
import warnings
from typing import Any

from etils import epath

from vllava_jax.checkpoint import hf
from vllava_jax.config import VideoLlavaConfig, VisionConfig
from vllava_jax.errors import ConfigError

_RENAMES = [
    (re.compile(r"^model\.(image|video)_tower\.\1_tower\."), r"\1_tower."),
    (re.compile(r"^model\.mm_projector\.0\."), "multi_modal_projector.linear_1."),
    (re.compile(r"^model\.mm_projector\.2\."), "multi_modal_projector.linear_2."),
    (re.compile(r"^model\.(layers|embed_tokens|norm)\."), r"language_model.\1."),
]
_TEMPORAL = re.compile(r"^model\.video_tower\.video_tower\.encoder\.layers\.(\d+)\.temporal_embedding$")
_TOP_LEVEL_OF_LLAVA = re.compile(r"^(mm_|tune_|freeze_|use_mm_proj|image_aspect_ratio|architectures|_)")
# LanguageBind's ViT-L/14 (both towers), used when a tower's own config.json is not at hand.
LANGUAGEBIND_VIT_L14 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                            patch_size=14, image_size=224, layer_norm_eps=1e-5, hidden_act="quick_gelu")
_SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}


def canonical_key(key: str) -> str:
    """An original-layout key in the spelling of `hf.name_map`."""
    for pattern, repl in _RENAMES:
        key = pattern.sub(repl, key)
    return hf.canonical_key(key)


def is_original(raw: dict[str, Any]) -> bool:
    return "mm_video_tower" in raw or "mm_image_tower" in raw


def _tower(name: str | None, directory: epath.Path, field: str) -> dict[str, Any]:
    """A tower's vision config: from `name`/config.json if that is a local dir, else LanguageBind's defaults."""
    vision_fields = {f.name for f in VisionConfig.__dataclass_fields__.values()} - {"add_time_attn", "num_frames"}
    if name:
        local = epath.Path(name) if epath.Path(name).is_absolute() else directory / name
        if (local / "config.json").exists():
            raw = json.loads((local / "config.json").read_text())
            raw = raw.get("vision_config", raw)
            return {k: v for k, v in raw.items() if k in vision_fields}
    warnings.warn(f"{directory}/config.json: {field} {name!r} is not a local directory with a config.json; "
                  f"assuming LanguageBind's published ViT-L/14 settings {LANGUAGEBIND_VIT_L14}", stacklevel=3)
    return dict(LANGUAGEBIND_VIT_L14)


def _placeholder_ids(directory: epath.Path, vocab: int) -> tuple[int, int]:
    added = directory / "added_tokens.json"
    tokens = json.loads(added.read_text()) if added.exists() else {}
    return tokens.get("<image>", vocab), tokens.get("<video>", vocab + 1)


def config(raw: dict[str, Any], directory: epath.Path, reader) -> VideoLlavaConfig:
    """Our config for an original checkpoint; `reader` (its tensors) tells whether video has temporal attention."""
    source = f"{directory}/config.json"
    projector = raw.get("mm_projector_type", "linear")
    if projector != "mlp2x_gelu":
        raise ConfigError(f"{source}: mm_projector_type {projector!r}; only 'mlp2x_gelu' (Video-LLaVA's) is supported")
    feature = raw.get("mm_vision_select_feature", "patch")
    if feature not in _SELECT_FEATURE:
        raise ConfigError(f"{source}: mm_vision_select_feature {feature!r} is not one of {sorted(_SELECT_FEATURE)}")
    image = _tower(raw.get("mm_image_tower"), directory, "mm_image_tower")
    video = _tower(raw.get("mm_video_tower"), directory, "mm_video_tower")
    frames = [reader.shape(k)[-2] for k in reader.keys() if _TEMPORAL.match(k)]
    if frames:
        video.update(add_time_attn=True, num_frames=frames[0])
    text = {k: v for k, v in raw.items() if not _TOP_LEVEL_OF_LLAVA.match(k)}
    image_id, video_id = _placeholder_ids(directory, raw.get("vocab_size", 32000))
    hf_dict = {
        "model_type": "video_llava",
        "vision_config": image,
        "video_vision_config": video if video != image else None,
        "text_config": {**text, "model_type": "llama"},
        "tie_word_embeddings": raw.get("tie_word_embeddings", False),
        "image_token_index": image_id,
        "video_token_index": video_id,
        "projector_hidden_act": "gelu",
        "vision_feature_select_strategy": _SELECT_FEATURE[feature],
        "vision_feature_layer": raw.get("mm_vision_select_layer", -2),
        "pad_token_id": raw.get("pad_token_id"),
    }
    return VideoLlavaConfig.from_hf_dict(hf_dict, source=source)
