"""Which parameters train: `config.trainable`, regexes over parameter paths ("language_model/layers/attn/q/kernel").

That one list is what partitioning, LoRA's adapters, FLOP counting (`flops.step_flops`) and
logging read. `preset` names the recipe's usual lists: stage 1 trains the projector, stage 2 the
projector and the LLM (towers frozen), `full` everything, `lora` the decoder's LoRA adapters
(`modeling/lora.py`; a config adds `PROJECTOR` to train the projector alongside, as the original's
LoRA stage 2 does). Frozen parameters never reach the optimizer, so no optimizer state is kept for them.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Sequence

from flax import nnx

from vllava_jax.modeling.lora import ADAPTER_PARAMS

if TYPE_CHECKING:  # only read here: benchmarks import this where ml_collections is not installed
    import ml_collections

PROJECTOR = r"^projector/"
PRESETS = {
    "stage1": (PROJECTOR,),
    "stage2": (PROJECTOR, r"^language_model/"),
    "full": (r".*",),
    "lora": (ADAPTER_PARAMS,),
}


def preset(name: str) -> tuple[str, ...]:
    """The trainable patterns a recipe's stage name stands for (`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"stage {name!r} is not one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_name(patterns: Sequence[str]) -> str:
    """The preset `patterns` are, for logs; "custom" for any other list."""
    return next((name for name, known in PRESETS.items() if tuple(patterns) == known), "custom")


def trainable_patterns(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """What `config` trains: its `trainable` list."""
    return tuple(config.trainable)


def trains(patterns: Sequence[str], path: str) -> bool:
    """Whether a parameter at `path` ("projector/linear_1/kernel") is trained under `patterns`."""
    return any(re.search(p, path) for p in patterns)


def trains_adapters(patterns: Sequence[str]) -> bool:
    """Whether the run trains LoRA adapters (and so must attach them)."""
    return ADAPTER_PARAMS in patterns


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
