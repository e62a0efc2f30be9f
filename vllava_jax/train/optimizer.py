"""AdamW with linear warmup + cosine decay and global-norm clipping, as the original recipe."""

from __future__ import annotations

import re

import jax
import optax


def learning_rate(peak: float, total_steps: int, warmup_ratio: float):
    warmup = max(1, int(round(total_steps * warmup_ratio)))
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total_steps, warmup + 1), end_value=0.0)


def path_of(key_path) -> str:
    """"projector/linear_1/kernel" for a parameter's pytree key path in an NNX state."""
    return "/".join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))


def make_optimizer(peak_lr: float, total_steps: int, warmup_ratio: float = 0.03, weight_decay: float = 0.0,
                   max_grad_norm: float = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   group_lrs: dict[str, float] | None = None):
    """(optimizer, the main schedule). `group_lrs` maps a parameter-path regex to its own peak
    learning rate (the original's `mm_projector_lr` for the projector in LoRA runs), same schedule shape;
    the clipping norm is over every parameter together, as transformers' Trainer clips."""
    schedule = learning_rate(peak_lr, total_steps, warmup_ratio)

    def adamw(peak):
        return optax.adamw(learning_rate(peak, total_steps, warmup_ratio), b1=b1, b2=b2, eps=eps,
                           weight_decay=weight_decay)

    if not group_lrs:
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw(peak_lr)), schedule
    patterns = [re.compile(p) for p in group_lrs]

    def labels(params):
        def label(key_path, _):
            name = path_of(key_path)
            return next((p.pattern for p in patterns if p.search(name)), "default")

        return jax.tree_util.tree_map_with_path(label, params)

    groups = {"default": adamw(peak_lr), **{p: adamw(lr) for p, lr in group_lrs.items()}}
    return optax.chain(optax.clip_by_global_norm(max_grad_norm), optax.multi_transform(groups, labels)), schedule
