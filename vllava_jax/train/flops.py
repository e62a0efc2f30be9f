"""Model FLOPs (for MFU) and accelerator peak FLOP/s by device kind.

`train_flops_per_token` is the decoder's: its matmuls forward and backward (6 x params per token
when the LLM trains; 4 x when it is frozen but gradients still flow through it to the projector)
and the causal attention score/value matmuls. `video_train_step_flops` is a whole step's: the
projector and the frozen towers' forward pass too, which run per visual token, not per text token.
"""

from __future__ import annotations

import jax

from vllava_jax.config import VideoLlavaConfig, VisionConfig

# dense bf16 peak FLOP/s per device
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v6 lite": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def train_flops_per_token(config: VideoLlavaConfig, stage: str, seq_len: int = 2048) -> float:
    """The decoder's training FLOPs per token of a `seq_len`-token row."""
    t = config.text_config
    attn = t.hidden_size * t.head_dim * (2 * t.num_attention_heads + 2 * t.num_key_value_heads)
    mlp = 3 * t.hidden_size * t.intermediate_size
    matmul_params = t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size
    attention_scores = 2 * t.num_hidden_layers * seq_len * t.num_attention_heads * t.head_dim
    return _llm_factor(stage) * matmul_params + 3 * attention_scores


def _llm_factor(stage: str) -> int:
    """FLOPs per decoder parameter per token: forward + input and weight gradients (6), or no weight
    gradients when the LLM is frozen and gradients only flow through it to the projector or its
    LoRA adapters (4; the adapters' own matmuls are not counted)."""
    return 4 if stage in ("stage1", "lora") else 6


def tower_flops(vision: VisionConfig, frames: int, layers: int) -> float:
    """Forward FLOPs of the patch embedding and `layers` encoder layers over `frames` images."""
    n, d, f = vision.num_positions, vision.hidden_size, vision.intermediate_size
    per_token = 2 * (4 * d * d + 2 * d * f) + 4 * n * d  # projections and MLP, then scores and values
    patch = 2 * vision.patch_size ** 2 * vision.num_channels * d
    return frames * (n * layers * per_token + vision.num_patches * patch)


def video_train_step_flops(config: VideoLlavaConfig, stage: str, rows: int, seq_len: int, frames: int,
                           head_tokens: int | None = None) -> float:
    """Model FLOPs of one train step over `rows` rows of `seq_len` tokens, each with one `frames`-frame video.

    Everything that must run is counted: the decoder's layers over every token, its LM head over
    `head_tokens` (the labelled ones, whose logits the loss needs; default every token),
    the projector (forward + weight gradients; input gradients too when the towers train), and the
    video tower's forward up to the deepest feature layer (3x, with its backward, when they train).
    """
    vision = config.video_tower_config
    depth = max(i % (vision.num_hidden_layers + 1) for i in config.feature_layers)
    feature_dim = vision.hidden_size * len(config.feature_layers)
    t = config.text_config
    hidden = t.hidden_size
    towers_train = stage == "full"
    projector = (6 if towers_train else 4) * (feature_dim * hidden + hidden * hidden) * frames * vision.num_positions
    tower = tower_flops(vision, frames, depth) * (3 if towers_train else 1)
    unneeded_logits = 0 if head_tokens is None else rows * seq_len - head_tokens
    head = _llm_factor(stage) * hidden * t.vocab_size * unneeded_logits
    return rows * (seq_len * train_flops_per_token(config, stage, seq_len) + projector + tower) - head


def peak_flops(override: float | None = None) -> float | None:
    """Per-device peak from the config, else from the table by `device_kind`; None on CPUs."""
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
