"""The leaf every checkpoint format hands on: a parameter read on demand, a stacked layer at a time.

Readers (safetensors, .bin, Orbax, an in-memory model) produce `Streamed` leaves and writers
(ours, transformers') consume them, so a conversion holds one slice of one tensor, never the model.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import numpy as np
from flax import nnx

Path = tuple[str, ...]


def is_stacked(path: Path) -> bool:
    """Whether the parameter at `path` stacks one slice per layer on its leading axis: the decoder's
    and towers' layers are built stacked (`modeling.layers.stacked`) under a `layers` module."""
    return "layers" in path


@dataclasses.dataclass(frozen=True)
class Streamed:
    """A leaf to be saved, read on demand: `read(i)` gives slice i of a stacked leaf, `read(None)` all of it."""

    shape: tuple[int, ...]
    dtype: np.dtype
    stacked: bool
    read: Callable[[int | None], np.ndarray]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def parts(self) -> list[int | None]:
        return list(range(self.shape[0])) if self.stacked else [None]

    def whole(self) -> np.ndarray:
        parts = [np.asarray(self.read(i), self.dtype) for i in self.parts]
        return np.stack(parts) if self.stacked else parts[0]


def in_memory(state) -> dict[Path, Streamed]:
    """An NNX state's (device) arrays as leaves, copied to the host a slice at a time."""
    return {path: Streamed(tuple(v.shape), np.dtype(v.dtype), is_stacked(path),
                           lambda i, v=v: np.asarray(jax.device_get(v[...] if i is None else v[...][i])))
            for path, v in nnx.to_flat_state(state)}
