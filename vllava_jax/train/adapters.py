"""LoRA runs (`config.trainable` holds `modeling.lora.ADAPTER_PARAMS`): adapters on the loaded base, float32 projector, its own learning rate.

The base model is loaded as the config says (`param_dtype = "bfloat16"` keeps 7B at 14 GB) and
stays frozen; `modeling.lora` hangs float32 adapters off the targeted dense layers. With
`partition.PROJECTOR` in `trainable` the projector trains too (the original's LoRA stage 2 does, at
`mm_projector_lr`), from float32 master weights.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

import vllava_jax
from vllava_jax.config import DTypePolicy
from vllava_jax.modeling import lora
from vllava_jax.train import partition


def lora_config(config: ml_collections.ConfigDict) -> lora.LoraConfig | None:
    """The run's adapter settings; None unless `config.trainable` trains adapters."""
    if not partition.trains_adapters(config.trainable):
        return None
    return lora.LoraConfig.from_config(config.lora, seed=config.seed)


def trains_projector(config: ml_collections.ConfigDict) -> bool:
    """Whether `config.trainable` trains the projector (float32 masters in a LoRA run, its own rate)."""
    return partition.trains(config.trainable, "projector/linear_1/kernel")


def add_adapters(module: nnx.Module, config: ml_collections.ConfigDict, policy: DTypePolicy) -> None:
    """Fresh adapters on the config's targets of `module` (and a float32 projector if it trains), in place."""
    lora.attach(module, lora_config(config), policy)
    if trains_projector(config):
        for _, variable in nnx.iter_graph(module.projector):
            if isinstance(variable, nnx.Param):
                variable.set_value(variable[...].astype(jnp.float32))


def with_adapters(model: vllava_jax.VideoLlava, config: ml_collections.ConfigDict) -> vllava_jax.VideoLlava:
    """`model` with `add_adapters` applied for a LoRA run; as is otherwise."""
    if lora_config(config) is None:
        return model
    module = model.module
    add_adapters(module, config, model.policy)
    return vllava_jax.VideoLlava(model.config, model.policy, *nnx.split(module), model.mesh)


def group_learning_rates(config: ml_collections.ConfigDict) -> dict[str, float]:
    """{path regex: peak lr} for parameters that do not use `config.learning_rate`."""
    if lora_config(config) is None or not trains_projector(config):
        return {}
    projector_lr = config.lora.get("projector_learning_rate", None)
    return {} if projector_lr is None else {partition.PROJECTOR: float(projector_lr)}

