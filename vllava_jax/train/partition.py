"""Which parameters a stage trains, by regex over their path ("language_model/layers/attn/q/kernel").

Stage 1 trains the projector; stage 2 the projector and the LLM; the towers stay frozen. Stage
`lora` trains only the decoder's LoRA adapters (`modeling/lora.py`), and the projector too with
`config.lora.train_projector`. Frozen parameters never reach the optimizer, so no optimizer state
is kept for them.
"""

from __future__ import annotations

import re
from typing import Sequence

import ml_collections
from flax import nnx

from vllava_jax.modeling.lora import ADAPTER_PARAMS

STAGES = {
    "stage1": (r"^projector/",),
    "stage2": (r"^projector/", r"^language_model/"),
    "full": (r".*",),
    "lora": (ADAPTER_PARAMS,),
}
PROJECTOR = r"^projector/"


def trainable_patterns(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """What `config` trains: its stage's patterns, plus the projector for LoRA with `lora.train_projector`."""
    patterns = STAGES[config.stage]
    if config.stage == "lora" and config.lora.get("train_projector", False):
        patterns += (PROJECTOR,)
    return patterns


def path_string(path: Sequence) -> str:
    return "/".join(str(p) for p in path)


def trainable_filter(patterns: Sequence[str]):
    """An NNX filter selecting parameters whose path matches any pattern."""
    compiled = [re.compile(p) for p in patterns]

    def is_trainable(path, value) -> bool:
        return isinstance(value, nnx.Param) and any(c.search(path_string(path)) for c in compiled)

    return is_trainable


def split_trainable(module: nnx.Module, patterns: Sequence[str]):
    """(graphdef, trainable state, frozen state); raises if the patterns select nothing."""
    graphdef, trainable, frozen = nnx.split(module, trainable_filter(patterns), ...)
    if not nnx.to_flat_state(trainable):
        raise ValueError(f"trainable patterns {list(patterns)} match no parameter")
    return graphdef, trainable, frozen
