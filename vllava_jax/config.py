"""Typed model configs, read from and written to transformers' `config.json` for `video_llava`.

Field names follow transformers so that a config round-trips without a translation table. The
one extension is `video_vision_config`: the original Video-LLaVA video tower (LanguageBind) adds a
temporal attention block per layer (`add_time_attn`), which transformers' single `vision_config`
cannot express; when it is absent the video tower shares the image tower's architecture.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from etils import epath

from vllava_jax.errors import ConfigError
from vllava_jax.jsonio import read_json

CONFIG_MISSING = "no such file; a checkpoint dir needs a config.json"

ROPE_TYPES = ("default", "linear", "dynamic", "llama3")


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A CLIP ViT tower; `add_time_attn` turns on LanguageBind's per-layer temporal attention."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    add_time_attn: bool = False
    num_frames: int = 8

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_positions(self) -> int:
        return self.num_patches + 1


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding parameters, normalized from `rope_theta`+`rope_scaling` or `rope_parameters`."""

    rope_type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int | None = None


@dataclasses.dataclass(frozen=True)
class TextConfig:
    """A LLaMA decoder (Vicuna-7B in the released model)."""

    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    head_dim: int = 128
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope: RopeConfig = RopeConfig()
    attention_bias: bool = False
    mlp_bias: bool = False
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None


@dataclasses.dataclass(frozen=True)
class VideoLlavaConfig:
    vision_config: VisionConfig = VisionConfig()
    text_config: TextConfig = TextConfig()
    video_vision_config: VisionConfig | None = None
    image_token_index: int = 32000
    video_token_index: int = 32001
    projector_hidden_act: str = "gelu"
    vision_feature_select_strategy: str = "default"
    vision_feature_layer: int | tuple[int, ...] = -2
    multimodal_projector_bias: bool = True
    pad_token_id: int | None = None

    @property
    def video_tower_config(self) -> VisionConfig:
        return self.video_vision_config or self.vision_config

    @property
    def feature_layers(self) -> tuple[int, ...]:
        layer = self.vision_feature_layer
        return (layer,) if isinstance(layer, int) else tuple(layer)

    @property
    def image_seq_length(self) -> int:
        """Visual tokens per image: patches, plus CLS under the "full" strategy."""
        cls = 0 if self.vision_feature_select_strategy == "default" else 1
        return self.vision_config.num_patches + cls

    def video_seq_length(self, num_frames: int) -> int:
        """Visual tokens per video: every frame keeps its CLS token."""
        return num_frames * self.video_tower_config.num_positions

    # ---- transformers config.json ----

    @classmethod
    def from_hf_dict(cls, raw: dict[str, Any], source: str = "config") -> VideoLlavaConfig:
        model_type = raw.get("model_type")
        if model_type != "video_llava":
            raise ConfigError(
                f"{source}: model_type is {model_type!r}; only 'video_llava' configs (transformers' "
                "VideoLlavaForConditionalGeneration) are read here"
            )
        strategy = raw.get("vision_feature_select_strategy", "default")
        if strategy not in ("default", "full"):
            raise ConfigError(f"{source}: vision_feature_select_strategy {strategy!r} is not 'default' or 'full'")
        layer = raw.get("vision_feature_layer", -2)
        text = _text_from_hf(raw.get("text_config") or {}, source)
        video = raw.get("video_vision_config")
        _check_numbers(raw, cls, source)
        for key, default in (("image_token_index", 32000), ("video_token_index", 32001)):
            if key not in raw and key.replace("index", "id") not in raw and default >= text.vocab_size:
                raise ConfigError(f"{source}: no {key}, and transformers' default {default} is outside "
                                  f"text_config.vocab_size {text.vocab_size}; set it to the placeholder's token id")
        return cls(
            vision_config=_vision_from_hf(raw.get("vision_config") or {}, source),
            text_config=dataclasses.replace(text, tie_word_embeddings=bool(raw.get("tie_word_embeddings", False))),
            video_vision_config=_vision_from_hf(video, source) if video else None,
            image_token_index=int(raw.get("image_token_index", raw.get("image_token_id", 32000))),
            video_token_index=int(raw.get("video_token_index", raw.get("video_token_id", 32001))),
            projector_hidden_act=raw.get("projector_hidden_act", "gelu"),
            vision_feature_select_strategy=strategy,
            vision_feature_layer=layer if isinstance(layer, int) else tuple(layer),
            multimodal_projector_bias=bool(raw.get("multimodal_projector_bias", True)),
            pad_token_id=raw.get("pad_token_id"),
        )

    @classmethod
    def from_json(cls, path: epath.PathLike) -> VideoLlavaConfig:
        path = epath.Path(path)
        raw = read_json(path, ConfigError, missing=CONFIG_MISSING)
        return cls.from_hf_dict(raw, source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json transformers writes for this model (plus `video_vision_config` if it differs)."""
        text = self.text_config
        out = {
            "architectures": ["VideoLlavaForConditionalGeneration"],
            "model_type": "video_llava",
            "image_token_index": self.image_token_index,
            "video_token_index": self.video_token_index,
            "projector_hidden_act": self.projector_hidden_act,
            "vision_feature_select_strategy": self.vision_feature_select_strategy,
            "vision_feature_layer": self.vision_feature_layer
            if isinstance(self.vision_feature_layer, int)
            else list(self.vision_feature_layer),
            "multimodal_projector_bias": self.multimodal_projector_bias,
            "image_seq_length": self.image_seq_length,
            "video_seq_length": self.video_seq_length(self.video_tower_config.num_frames),
            "tie_word_embeddings": text.tie_word_embeddings,
            "pad_token_id": self.pad_token_id,
            "vision_config": _vision_to_hf(self.vision_config),
            "text_config": _text_to_hf(text),
        }
        if self.video_vision_config is not None:
            out["video_vision_config"] = _vision_to_hf(self.video_vision_config)
        return out


def _check_numbers(raw: dict[str, Any], cls, where: str) -> None:
    """A size or rate of the wrong type (`"hidden_size": "96"`) named here, not as a JAX TypeError later."""
    for f in dataclasses.fields(cls):
        value = raw.get(f.name)
        if value is None or f.type not in ("int", "float"):
            continue
        kinds = (int,) if f.type == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise ConfigError(f"{where}.{f.name} is {value!r}; expected a{'n integer' if f.type == 'int' else ' number'}")


def _vision_from_hf(raw: dict[str, Any], source: str) -> VisionConfig:
    mt = raw.get("model_type", "clip_vision_model")
    if mt not in ("clip_vision_model", "clip", "LanguageBindVideo", "LanguageBindImage"):
        raise ConfigError(f"{source}: vision_config.model_type {mt!r} is not a CLIP vision model")
    _check_numbers(raw, VisionConfig, f"{source}: vision_config")
    names = {f.name for f in dataclasses.fields(VisionConfig)}
    return VisionConfig(**{k: v for k, v in raw.items() if k in names})


def _vision_to_hf(cfg: VisionConfig) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    if not cfg.add_time_attn:
        del out["add_time_attn"], out["num_frames"]
    return {"model_type": "clip_vision_model", **out}


def _rope_from_hf(raw: dict[str, Any], source: str) -> RopeConfig:
    """transformers 5 writes `rope_parameters`; 4.x wrote `rope_theta` and `rope_scaling`."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = raw.get("rope_scaling") or {}
    params.update({k: v for k, v in scaling.items() if k not in params})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise ConfigError(f"{source}: text_config rope type {rope_type!r} is not one of {ROPE_TYPES}")
    theta = params.get("rope_theta", raw.get("rope_theta", 10000.0))
    return RopeConfig(
        rope_type=rope_type,
        theta=float(theta),
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
    )


def _text_from_hf(raw: dict[str, Any], source: str) -> TextConfig:
    mt = raw.get("model_type", "llama")
    if mt != "llama":
        raise ConfigError(f"{source}: text_config.model_type {mt!r} is not 'llama'")
    if raw.get("hidden_act", "silu") != "silu":
        raise ConfigError(f"{source}: text_config.hidden_act {raw['hidden_act']!r}; LLaMA uses 'silu'")
    _check_numbers(raw, TextConfig, f"{source}: text_config")
    defaults = TextConfig()
    hidden = raw.get("hidden_size", defaults.hidden_size)
    heads = raw.get("num_attention_heads", defaults.num_attention_heads)
    names = {f.name for f in dataclasses.fields(TextConfig)} - {"rope", "head_dim", "num_key_value_heads"}
    values = {k: raw[k] for k in names if k in raw}
    return TextConfig(
        **values,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or hidden // heads,
        rope=_rope_from_hf(raw, source),
    )


def _text_to_hf(cfg: TextConfig) -> dict[str, Any]:
    out = dataclasses.asdict(cfg)
    rope = out.pop("rope")
    params = {"rope_type": rope["rope_type"], "rope_theta": rope["theta"]}
    if rope["rope_type"] != "default":
        params["factor"] = rope["factor"]
    if rope["rope_type"] == "llama3":
        params.update(
            low_freq_factor=rope["low_freq_factor"],
            high_freq_factor=rope["high_freq_factor"],
            original_max_position_embeddings=rope["original_max_position_embeddings"],
        )
    return {"model_type": "llama", **out, "rope_parameters": params}


@dataclasses.dataclass(frozen=True)
class DTypePolicy:
    """The one place dtypes are decided: what parameters are stored in and what matmuls run in.

    float32 asks for full-precision matmuls: on GPUs XLA would otherwise round float32 operands
    to TF32 and lose parity with the reference.
    """

    param_dtype: Any = jnp.float32
    compute_dtype: Any = jnp.float32
    matmul_precision: str = "highest"

    @classmethod
    def from_names(cls, param: str, compute: str) -> DTypePolicy:
        """Master weights in `param`, matmuls in `compute` (e.g. float32 / bfloat16 for training)."""
        dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
        for name in (param, compute):
            if name not in dtypes:
                raise ConfigError(f"dtype {name!r} is not one of {sorted(dtypes)}")
        precision = "highest" if compute == "float32" else "default"
        return cls(param_dtype=dtypes[param], compute_dtype=dtypes[compute], matmul_precision=precision)

    @classmethod
    def from_name(cls, name: str) -> DTypePolicy:
        return cls.from_names(name, name)

    @classmethod
    def resolve(cls, dtype: str | DTypePolicy) -> DTypePolicy:
        """A policy as given, or the one-dtype policy a name stands for."""
        return dtype if isinstance(dtype, DTypePolicy) else cls.from_name(dtype)
