"""LoRA adapters on the decoder's projections: y = x W + (dropout(x) A) B * scaling, W frozen.

Adapters hang off the `Dense` modules whose path (e.g. "language_model/layers/attn/q") matches a
regex of the config, so the base weights stay where they are (any dtype, bfloat16 to fit one GPU),
are never copied, and hold no optimizer state; A and B are float32. Semantics follow PEFT's LoRA:
scaling = alpha / rank (alpha / sqrt(rank) with rsLoRA), A drawn like torch's kaiming-uniform
init of `lora_A`, B zero, so a fresh adapter changes nothing. Stacked (scanned) layers get stacked
adapters with the same leading `layers` axis.

Dropout on the adapter's input runs only inside `dropout_at(step)` (the train step); each
adapter and layer draws its own mask from a fixed per-(module, layer) salt folded with the step,
hashed where it is applied (`fused_random.bernoulli`): no random words are stored.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
import re
import zlib
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vllava_jax.config import DTypePolicy
from vllava_jax.errors import ConfigError
from vllava_jax.modeling import fused_random
from vllava_jax.modeling.layers import Dense, matmul_2d

if TYPE_CHECKING:  # only read here: the model imports where ml_collections is not installed
    import ml_collections

# The original's LoRA targets every Linear of the LLM but the LM head (`find_all_linear_names`).
DEFAULT_TARGETS = (r"^language_model/layers/attn/[qkvo]$", r"^language_model/layers/mlp/(gate|up|down)$")
ADAPTER_PARAMS = r"/adapter/(a|b)$"  # where the adapters' parameters sit in the state


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = DEFAULT_TARGETS  # regexes over module paths, searched
    use_rslora: bool = False
    seed: int = 0  # initial A and the dropout masks

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, seed: int = 0) -> LoraConfig:
        """From a training config's `lora` block (rank, alpha, dropout, targets, use_rslora)."""
        lora = config.to_dict()
        known = {f.name for f in dataclasses.fields(cls)} | {"projector_learning_rate"}
        unknown = sorted(set(lora) - known)
        if unknown:
            raise ConfigError(f"config.lora: unknown key(s) {unknown}; known: {sorted(known)}")
        if int(lora.get("rank", 0)) < 1:
            raise ConfigError(f"config.lora.rank must be at least 1, got {lora.get('rank')}")
        if not 0.0 <= float(lora.get("dropout", 0.0)) < 1.0:
            raise ConfigError(f"config.lora.dropout must be in [0, 1), got {lora.get('dropout')}")
        for pattern in lora.get("targets", ()):
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(f"config.lora.targets: {pattern!r} is not a regex ({e})") from None
        return cls(rank=int(lora["rank"]), alpha=float(lora.get("alpha", 2 * lora["rank"])),
                   dropout=float(lora.get("dropout", 0.0)), targets=tuple(lora.get("targets", DEFAULT_TARGETS)),
                   use_rslora=bool(lora.get("use_rslora", False)), seed=seed)


class DropoutSalt(nnx.Variable):
    """A per-(module, layer) integer that makes each adapter's dropout mask its own; never trained."""


_DROPOUT_STEP: contextvars.ContextVar[jax.Array | None] = contextvars.ContextVar("lora_dropout_step", default=None)


def dropout_at(step: jax.Array, fn: Callable) -> Callable:
    """`fn` with adapter dropout on while it is traced, its masks drawn for train step `step`."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        token = _DROPOUT_STEP.set(step)
        try:
            return fn(*args, **kwargs)
        finally:
            _DROPOUT_STEP.reset(token)

    return wrapped


class LoraAdapter(nnx.Module):
    """The low-rank update of one `Dense`: a (in..., rank), b (rank, out...), each with the dense's layers axis."""

    def __init__(self, dense: Dense, config: LoraConfig, path: str, policy: DTypePolicy):
        kernel = dense.kernel
        axes = tuple(kernel.get_metadata().get("out_sharding") or (None,) * kernel.ndim)
        lead = 1 if axes[0] == "layers" else 0
        in_end = lead + dense.in_ndim
        in_shape, out_shape = kernel.shape[lead:in_end], kernel.shape[in_end:]
        layers = kernel.shape[:lead]
        self.in_ndim = dense.in_ndim
        self.config = config
        self.policy = policy
        seed = zlib.crc32(f"{config.seed}/{path}".encode())
        key = jax.random.key(seed)
        # torch's kaiming_uniform_(a=sqrt(5)) on lora_A (rank, fan_in): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(key, (*layers, *in_shape, config.rank), jnp.float32, -bound, bound)
        self.a = nnx.Param(a, out_sharding=(*axes[:in_end], None), eager_sharding=False)
        self.b = nnx.Param(jnp.zeros((*layers, config.rank, *out_shape), jnp.float32),
                           out_sharding=(*axes[:lead], None, *axes[in_end:]), eager_sharding=False)
        salt = (np.arange(math.prod(layers), dtype=np.uint32) + np.uint32(seed)).reshape(layers)
        self.salt = DropoutSalt(jnp.asarray(salt), out_sharding=axes[:lead], eager_sharding=False)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.policy.compute_dtype
        step = _DROPOUT_STEP.get()
        rate = self.config.dropout
        if rate > 0 and step is not None:
            keep = fused_random.bernoulli(jax.random.fold_in(jax.random.key(self.salt[...]), step), 1 - rate, x.shape)
            x = jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)
        h = matmul_2d(x.astype(dtype), self.a[...].astype(dtype), self.in_ndim)
        return matmul_2d(h, self.b[...].astype(dtype)) * jnp.asarray(self.config.scaling, dtype)

    def delta(self) -> jax.Array:
        """scaling * a @ b in float32, shaped like the dense's kernel (stacked layers included)."""
        a, b = self.a[...], self.b[...]
        lead = a.ndim - self.in_ndim - 1
        flat_a = a.reshape(*a.shape[:lead], -1, a.shape[-1])
        flat_b = b.reshape(*b.shape[:lead + 1], -1)
        delta = jnp.einsum("...ir,...ro->...io", flat_a, flat_b, precision="highest") * self.config.scaling
        return delta.reshape(*a.shape[:-1], *b.shape[lead + 1:])


def path_string(path: Sequence) -> str:
    return "/".join(str(p) for p in path)


def target_denses(module: nnx.Module, targets: Sequence[str]) -> Iterator[tuple[str, Dense]]:
    """(path, Dense) of every dense whose path matches one of `targets`, in a fixed order."""
    compiled = [re.compile(t) for t in targets]
    for path, node in nnx.iter_graph(module):
        name = path_string(path)
        if isinstance(node, Dense) and any(c.search(name) for c in compiled):
            yield name, node


def attach(module: nnx.Module, config: LoraConfig, policy: DTypePolicy) -> list[str]:
    """Give every targeted `Dense` of `module` a fresh adapter, in place; returns their paths.

    Raises if the targets select nothing, or a dense already has an adapter.
    """
    found = list(target_denses(module, config.targets))
    if not found:
        raise ConfigError(f"LoRA targets {list(config.targets)} match no dense layer; paths look like "
                          "'language_model/layers/attn/q' or 'language_model/layers/mlp/gate'")
    for path, dense in found:
        if dense.adapter is not None:
            raise ConfigError(f"{path} already has a LoRA adapter")
        dense.adapter = LoraAdapter(dense, config, path, policy)
    return [path for path, _ in found]


def adapters(module: nnx.Module) -> Iterator[tuple[str, Dense]]:
    """(path, Dense) of every dense that carries an adapter."""
    for path, node in nnx.iter_graph(module):
        if isinstance(node, Dense) and node.adapter is not None:
            yield path_string(path), node


def merge(module: nnx.Module) -> int:
    """Fold every adapter into its dense's kernel (kernel dtype kept) and drop it, in place; returns how many."""
    merged = list(adapters(module))
    for _, dense in merged:
        kernel = dense.kernel[...]
        dense.kernel.set_value((kernel.astype(jnp.float32) + dense.adapter.delta()).astype(kernel.dtype))
        dense.adapter = None
    return len(merged)
