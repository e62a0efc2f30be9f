"""Model FLOPs (for MFU) and accelerator peak FLOP/s by device kind.

`step_flops` is the one count of a train step's model FLOPs: the trainer's MFU, every benchmark's
and `train.aot`'s plan use it; what trains is the config's `trainable` list (`train.partition`).
"""

from __future__ import annotations

from typing import Sequence

import jax

from vllava_jax.config import VideoLlavaConfig, VisionConfig
from vllava_jax.train import partition

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


def step_flops(config: VideoLlavaConfig, trainable: Sequence[str], rows: int, seq_len: int, frames: int,
               head_tokens: int | None = None, images: int = 0) -> float:
    """Model FLOPs of one train step over `rows` rows of `seq_len` tokens, each with one `frames`-frame
    video and `images` images.

    Every matmul that must run is counted, 2 FLOPs per multiply-add, forward then backward: a
    weight's gradient only where `trainable` (the config's path regexes) trains it, an input's
    gradient only where something upstream trains. So a frozen tower costs its forward up to the
    deepest feature layer (3x when it trains); the projector its forward plus the gradients
    that are needed; the decoder's layers run over every token, its causal attention scores and
    values over the half of each row a token sees; its LM head over `head_tokens` (the labelled
    positions whose logits the loss needs; default every token). LoRA adapters' own matmuls
    (rank << hidden) are not counted.
    """
    towers_train = partition.trains(trainable, "video_tower/layers/attn/q/kernel")
    projector_trains = partition.trains(trainable, "projector/linear_1/kernel")
    llm_trains = partition.trains(trainable, "language_model/layers/attn/q/kernel")
    grads_reach_decoder = towers_train or projector_trains or llm_trains or partition.trains_adapters(trainable)
    llm_factor = 2 + 2 * grads_reach_decoder + 2 * llm_trains  # forward, input gradients, weight gradients

    t = config.text_config
    attn = t.hidden_size * t.head_dim * (2 * t.num_attention_heads + 2 * t.num_key_value_heads)
    layers = t.num_hidden_layers * (attn + 3 * t.hidden_size * t.intermediate_size)
    attention_scores = 2 * t.num_hidden_layers * seq_len * t.num_attention_heads * t.head_dim  # causal half, per token
    tokens = rows * seq_len
    head = t.hidden_size * t.vocab_size * (tokens if head_tokens is None else head_tokens)
    decoder = llm_factor * (layers * tokens + head) + (3 if grads_reach_decoder else 1) * attention_scores * tokens

    feature_dim = config.vision_config.hidden_size * len(config.feature_layers)
    hidden = t.hidden_size
    # forward and weight gradients of both linears; input gradients of the second whenever the
    # first trains or the towers do, of the first only when the towers train
    projector_per_token = ((2 + 2 * projector_trains) * (feature_dim + hidden) * hidden
                           + 2 * hidden * hidden * (projector_trains or towers_train) + 2 * feature_dim * hidden * towers_train)
    tower_factor = 3 if towers_train else 1
    per_row = 0.0
    for tower, count, tokens_each in ((config.video_tower_config, frames, config.video_tower_config.num_positions),
                                      (config.vision_config, images, config.image_seq_length)):
        per_row += tower_factor * tower_flops(tower, count, feature_depth(config, tower))
        per_row += projector_per_token * count * tokens_each
    return decoder + rows * per_row


def feature_depth(config: VideoLlavaConfig, tower: VisionConfig) -> int:
    """How many of `tower`'s layers run: up to the deepest feature layer the projector reads."""
    return max(i % (tower.num_hidden_layers + 1) for i in config.feature_layers)


def tower_flops(vision: VisionConfig, frames: int, layers: int) -> float:
    """Forward FLOPs of the patch embedding and `layers` encoder layers over `frames` images."""
    n, d, f = vision.num_positions, vision.hidden_size, vision.intermediate_size
    per_token = 2 * (4 * d * d + 2 * d * f) + 4 * n * d  # projections and MLP, then scores and values
    patch = 2 * vision.patch_size ** 2 * vision.num_channels * d
    return frames * (n * layers * per_token + vision.num_patches * patch)


def peak_flops(override: float | None = None) -> float | None:
    """Per-device peak from the config, else from the table by `device_kind`; None on CPUs."""
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
