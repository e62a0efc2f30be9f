"""What a training run trains, built one way: the model, its adapters, the trainable / frozen split, the optimizer.

The trainer (`loop.train`), `train.export` (restoring a run's checkpoint), the ahead-of-time
programs (`programs`, `train.aot`) and the memory benchmarks all build it here, so the state a
checkpoint holds, the program `train.aot` sizes and the step a run executes cannot drift apart:
the model from `init_checkpoint` (or randomly from `model`), LoRA adapters when `config.trainable`
trains them, the parameters `config.trainable` selects apart from the frozen rest, and AdamW with
the parameter groups' own learning rates (`adapters.group_learning_rates`).
"""

from __future__ import annotations

import dataclasses

import ml_collections
import optax
from etils import epath
from flax import nnx
from jax.sharding import Mesh

import vllava_jax
from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.modeling.video_llava import VideoLlavaModel
from vllava_jax.sharding import MAX_REPLICATED_FRACTION, check_sufficiently_sharded
from vllava_jax.train import adapters, partition
from vllava_jax.train.optimizer import make_optimizer


@dataclasses.dataclass
class Training:
    """A run's model split for training, and its optimizer."""

    model_config: VideoLlavaConfig
    graphdef: nnx.GraphDef
    trainable: nnx.State  # what the optimizer updates (and checkpoints hold)
    frozen: nnx.State  # never differentiated, no optimizer state
    optimizer: optax.GradientTransformation
    schedule: optax.Schedule  # the learning rate of `config.learning_rate`'s group, by step (logged)


def policy_from_config(config: ml_collections.ConfigDict) -> DTypePolicy:
    return DTypePolicy.from_names(config.get("param_dtype", "float32"), config.get("compute_dtype", "bfloat16"))


def build_model_config(config: ml_collections.ConfigDict) -> VideoLlavaConfig:
    if config.get("init_checkpoint"):
        return VideoLlavaConfig.from_json(epath.Path(config.init_checkpoint) / "config.json")
    return VideoLlavaConfig.from_hf_dict(config.model.to_dict())


def max_replicated_fraction(config: ml_collections.ConfigDict) -> float:
    return config.get("max_replicated_fraction", MAX_REPLICATED_FRACTION)


def build_model(config: ml_collections.ConfigDict, mesh: Mesh | None) -> vllava_jax.VideoLlava:
    """From a converted checkpoint (`init_checkpoint`) or randomly from `model` (a config.json dict);
    with fresh LoRA adapters when `config.trainable` trains them. A `mesh` that leaves more than
    `config.max_replicated_fraction` of the parameter bytes replicated is refused."""
    policy = policy_from_config(config)
    if config.get("init_checkpoint"):
        model = vllava_jax.load_pretrained(config.init_checkpoint, dtype=policy, remat=config.remat, mesh=mesh,
                                           max_replicated_fraction=max_replicated_fraction(config))
    else:
        model = vllava_jax.VideoLlava.random(build_model_config(config), dtype=policy, seed=config.seed,
                                             remat=config.remat)
    model = adapters.with_adapters(model, config)
    if mesh is not None:
        check_sufficiently_sharded(model.state, mesh, max_replicated_fraction=max_replicated_fraction(config))
    return model


def abstract_model(config: ml_collections.ConfigDict, model_config: VideoLlavaConfig) -> VideoLlavaModel:
    """`build_model`'s module as shapes and dtypes only (`nnx.eval_shape`): no weight is materialized."""
    policy = policy_from_config(config)

    def build() -> VideoLlavaModel:
        module = VideoLlavaModel(model_config, policy, nnx.Rngs(0), config.remat)
        if adapters.lora_config(config) is not None:
            adapters.add_adapters(module, config, policy)
        return module

    return nnx.eval_shape(build)


def build_training(config: ml_collections.ConfigDict, mesh: Mesh | None = None, abstract: bool = False,
                   model_config: VideoLlavaConfig | None = None) -> Training:
    """The run `config` describes, ready for `state.create_train_state` / `state.abstract_train_state`.

    `abstract`: shapes only, of `model_config`'s architecture (default: the config's), for
    compiling ahead of time. Otherwise the model is built (`build_model`, placed on `mesh`; one
    device without one).
    """
    if abstract:
        model_config = model_config or build_model_config(config)
        module = abstract_model(config, model_config)
    else:
        model = build_model(config, mesh)
        model_config, module = model.config, model.module
    graphdef, trainable, frozen = partition.split_trainable(module, partition.trainable_patterns(config))
    optimizer, schedule = make_optimizer(config.learning_rate, config.total_steps, config.warmup_ratio,
                                         config.weight_decay, config.max_grad_norm,
                                         group_lrs=adapters.group_learning_rates(config))
    return Training(model_config, graphdef, trainable, frozen, optimizer, schedule)
