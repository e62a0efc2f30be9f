"""A stated step-time model from a compiled program's per-chip figures (`hlo_stats.Cost`), and the
bytes a decode step must read (what decoding's memory roofline divides the bandwidth by).

    step = max(FLOPs / peak FLOP/s, HBM bytes / HBM bandwidth) + collective bytes / ICI bandwidth

Compute and memory traffic overlap, each at the chip's peak: the step the program allows, which
real kernels do not reach, so where collectives are small read it as a floor on step time and its
MFU as a ceiling. Collectives are assumed not to overlap (pessimistic: XLA overlaps much of
FSDP's gathers with compute). Collective bytes per chip: the buffer size of each all-gather,
reduce-scatter, all-to-all and collective-permute, twice that of each all-reduce (a ring moves
(n-1)/n of the buffer per phase; taken as 1), over the chip's bidirectional ICI bandwidth (all
links). MFU counts model FLOPs only (`train.flops`), not rematerialization.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from vllava_jax.config import TextConfig
from vllava_jax.train.hlo_stats import Cost
from vllava_jax.train.topology import Chip


def ici_bytes(cost: Cost) -> float:
    return sum(size * (2 if kind == "all-reduce" else 1) for kind, size in cost.collectives.items())


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    compute_s: float
    memory_s: float
    ici_s: float

    @property
    def step_s(self) -> float:
        return max(self.compute_s, self.memory_s) + self.ici_s

    @property
    def bound(self) -> str:
        return "compute" if self.compute_s >= self.memory_s else "HBM bandwidth"


def estimate(cost: Cost, chip: Chip) -> StepEstimate:
    return StepEstimate(cost.flops / chip.peak_flops, cost.hbm_bytes / chip.hbm_bandwidth,
                        ici_bytes(cost) / chip.ici_bandwidth)


def decode_step_bytes(language_model_state, text_config: TextConfig, batch: int, filled: float, cache_dtype) -> float:
    """The least a decode step reads: the decoder's parameters (arrays or their shapes; the input
    embedding table but one row a token, so not counted unless tied to the LM head) and `batch`
    rows' `filled` cached tokens (keys and values of every layer, in `cache_dtype`)."""
    flat = jax.tree_util.tree_flatten_with_path(language_model_state)[0]
    total = sum(leaf.size * np.dtype(leaf.dtype).itemsize for _, leaf in flat)
    embed = next(leaf.size * np.dtype(leaf.dtype).itemsize for path, leaf in flat
                 if "embed_tokens" in jax.tree_util.keystr(path))
    params = total - (0 if text_config.tie_word_embeddings else embed)
    per_token = 2 * text_config.num_hidden_layers * text_config.num_key_value_heads * text_config.head_dim
    return params + batch * filled * per_token * np.dtype(cache_dtype).itemsize
