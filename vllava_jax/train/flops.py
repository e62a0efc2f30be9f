"""Model FLOPs per trained token (for MFU) and accelerator peak FLOP/s by device kind.

Counted: the decoder's matmuls, forward and backward (6 x params per token when the LLM trains;
4 x when it is frozen but gradients still flow through it to the projector), the attention
score/value matmuls, and the projector. Not counted: the frozen towers' forward pass, which runs
per visual token, not per text token; MFU here is therefore the decoder's.
"""

from __future__ import annotations

import jax

from vllava_jax.config import VideoLlavaConfig

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
    t = config.text_config
    attn = t.hidden_size * t.head_dim * (2 * t.num_attention_heads + 2 * t.num_key_value_heads)
    mlp = 3 * t.hidden_size * t.intermediate_size
    matmul_params = t.num_hidden_layers * (attn + mlp) + t.hidden_size * t.vocab_size
    attention_scores = 2 * t.num_hidden_layers * seq_len * t.num_attention_heads * t.head_dim
    llm_factor = 4 if stage == "stage1" else 6
    return llm_factor * matmul_params + 3 * attention_scores


def peak_flops(override: float | None = None) -> float | None:
    """Per-device peak from the config, else from the table by `device_kind`; None on CPUs."""
    if override:
        return float(override)
    kind = jax.devices()[0].device_kind
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
