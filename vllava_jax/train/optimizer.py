"""AdamW with linear warmup + cosine decay and global-norm clipping, as the original recipe."""

from __future__ import annotations

import optax


def learning_rate(peak: float, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end_value=0.0)


def make_optimizer(peak_lr: float, total_steps: int, warmup_ratio: float = 0.03, weight_decay: float = 0.0,
                   max_grad_norm: float = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    schedule = learning_rate(peak_lr, total_steps, warmup_ratio)
    return optax.chain(
        optax.clip_by_global_norm(max_grad_norm),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay),
    ), schedule
