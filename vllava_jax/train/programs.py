"""The trainer's step and the generation loop lowered on abstract inputs: no weight is materialized.

Parameters come from `nnx.eval_shape`, the optimizer state from `jax.eval_shape`, the batch is
`jax.ShapeDtypeStruct`s; every one carries the sharding the trainer gives it (the rules table in
`vllava_jax.sharding`). `jax.jit(...).lower(...).compile()` then builds the very program a run
would execute on the mesh's devices, whatever they are (simulated CPU devices, or a TPU slice's
compile-only devices from `train.topology`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vllava_jax import generation
from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.modeling.video_llava import VideoLlavaModel
from vllava_jax.sharding import logical_to_spec, state_shardings
from vllava_jax.train import state as train_state
from vllava_jax.train.build import build_training
from vllava_jax.train.loop import batch_shardings
from vllava_jax.train.step import TrainState


@dataclasses.dataclass
class AbstractTrainState:
    graphdef: Any
    optimizer: optax.GradientTransformation
    state: TrainState  # of ShapeDtypeStructs with shardings
    frozen: nnx.State


def placed(tree, shardings):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


def abstract_train_state(config: ml_collections.ConfigDict, model_config: VideoLlavaConfig, mesh: Mesh,
                         ) -> AbstractTrainState:
    """The train state `loop.train` builds, as shapes: parameters, Adam moments and step on `mesh`
    (`train.state.abstract_train_state`), frozen parameters on their rules-table placements."""
    training = build_training(config, abstract=True, model_config=model_config)
    frozen = placed(training.frozen, state_shardings(training.frozen, mesh))
    state = train_state.abstract_train_state(training.trainable, training.optimizer, mesh)
    return AbstractTrainState(training.graphdef, training.optimizer, state, frozen)


def abstract_batch(model_config: VideoLlavaConfig, mesh: Mesh, accum: int, rows: int, length: int) -> dict:
    """The data pipeline's batch (`data_pipelines/batching.py`), stacked for accumulation.

    (accum, rows, length) token arrays and, as `BatchSpec.for_processor` sizes them by default, one
    image and one 8-frame video entry per row: the towers run on every entry every step.
    """
    size = model_config.vision_config.image_size
    frames = model_config.video_tower_config.num_frames
    tokens = (accum, rows, length)
    shapes = {"input_ids": tokens, "labels": tokens, "attention_mask": tokens, "positions": tokens,
              "segment_ids": tokens, "pixel_values_images": (accum, rows, 1, 3, size, size),
              "pixel_values_videos": (accum, rows, 1, frames, 3, size, size)}
    shardings = batch_shardings(shapes, mesh)
    return {k: jax.ShapeDtypeStruct(v, jnp.float32 if k.startswith("pixel") else jnp.int32, sharding=shardings[k])
            for k, v in shapes.items()}


def lower_train_step(config: ml_collections.ConfigDict, model_config: VideoLlavaConfig, mesh: Mesh, accum: int,
                     rows: int):
    """(lowered step, abstract train state): `rows` rows of `config.max_length` per microbatch."""
    train = abstract_train_state(config, model_config, mesh)
    batch = abstract_batch(model_config, mesh, accum, rows, config.max_length)
    with jax.set_mesh(mesh):
        step = train_state.jit_train_step(train.graphdef, train.optimizer, train.state, train.frozen,
                                          jax.tree.map(lambda x: x.sharding, batch))
        lowered = step.lower(train.state, train.frozen, batch)
    return lowered, train


def lower_generation(model_config: VideoLlavaConfig, mesh: Mesh, batch: int, prompt_length: int, new_tokens: int,
                     dtype: str = "bfloat16"):
    """The whole of `generate` (towers + prompt prefill, then the decode loop) for `batch` left-padded
    prompts of `prompt_length` tokens, each with one video, `new_tokens` new tokens, greedy."""
    policy = DTypePolicy.resolve(dtype)
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(model_config, policy, nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    state = placed(state, state_shardings(state, mesh))

    def rows(shape, dtype):
        names = ("batch",) + (None,) * (len(shape) - 1)
        return jax.ShapeDtypeStruct(shape, dtype, sharding=NamedSharding(mesh, logical_to_spec(names, shape, mesh)))

    size = model_config.video_tower_config.image_size
    ids = rows((batch, prompt_length), jnp.int32)
    videos = rows((batch, model_config.video_tower_config.num_frames, 3, size, size), jnp.float32)
    key = jax.eval_shape(lambda: jax.random.key(0))
    key = jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=NamedSharding(mesh, PartitionSpec()))
    sampling = generation.sampling_config(model_config, max_new_tokens=new_tokens)
    with jax.set_mesh(mesh), jax.default_matmul_precision(policy.matmul_precision):
        return generation.generate_program.lower(graphdef, state, ids, ids, None, videos, key, sampling)
