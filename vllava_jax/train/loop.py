"""The training loop: mesh, sharded state, the one jitted step, Orbax checkpoints, logs.

A run resumes from the latest complete checkpoint in its workdir (Orbax writes each step to a
temporary dir and commits it by rename, so a step interrupted mid-write is never picked). The data
iterator's state is saved with the parameters and optimizer, so a resumed run sees the very next
batch. A non-finite loss stops the run before anything is saved from the bad step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Protocol

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding
from tqdm import tqdm

from vllava_jax import cli
from vllava_jax.errors import VllavaError
from vllava_jax.eval.cache import write_atomic
from vllava_jax.sharding import logical_to_spec, make_mesh, state_shardings
from vllava_jax.train import flops, partition
from vllava_jax.train.build import build_training
from vllava_jax.train.run_config import RUN_CONFIG, check_config, check_resume, keep_logged_steps, resolved_config
from vllava_jax.train.state import create_train_state, jit_train_step
from vllava_jax.train.step import TrainState

MODEL_KEYS = ("input_ids", "labels", "attention_mask", "positions", "segment_ids", "pixel_values_images",
              "pixel_values_videos")


class TrainingDiverged(VllavaError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DataIterator(Protocol):
    def __next__(self) -> dict[str, np.ndarray]: ...
    def get_state(self) -> Any: ...
    def set_state(self, state: Any) -> None: ...


@dataclasses.dataclass
class RunResult:
    losses: list[float]
    state: TrainState
    frozen: nnx.State
    graphdef: Any


def global_shapes(batch: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Each process holds its own rows (axis 1; axis 0 stacks microbatches): the global batch has them all."""
    return {k: (v.shape[0], v.shape[1] * jax.process_count(), *v.shape[2:]) for k, v in batch.items()}


def batch_shardings(shapes: dict[str, tuple[int, ...]], mesh) -> dict[str, NamedSharding]:
    """Rows over (data, fsdp), media buffers too: they are per row (`data_pipelines/batching.py`)."""
    def one(shape):
        return NamedSharding(mesh, logical_to_spec((None, "batch") + (None,) * (len(shape) - 2), shape, mesh))

    return {k: one(v) for k, v in shapes.items()}


def _stack(iterator: DataIterator, accum: int, skipped: list[np.ndarray]) -> dict[str, np.ndarray]:
    batches = [next(iterator) for _ in range(accum)]
    skipped.extend(b["skipped"] for b in batches if "skipped" in b)
    return {k: np.stack([b[k] for b in batches]) for k in MODEL_KEYS if k in batches[0]}


def to_global(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict[str, jax.Array]:
    """One global array per key from every process's local rows (each process reads its own shard)."""
    if jax.process_count() == 1:
        return jax.device_put(batch, shardings)
    for key, sharding in shardings.items():
        if sharding.is_fully_replicated:
            raise VllavaError(f"batch[{key!r}] of local shape {batch[key].shape} cannot be split between "
                              f"{jax.process_count()} processes over the mesh's data axis; make its per-process "
                              "size divide the data axis size / processes")
    shapes = global_shapes(batch)
    return {k: jax.make_array_from_process_local_data(shardings[k], v, shapes[k]) for k, v in batch.items()}


class Logger:
    """The same scalars to a JSONL file and TensorBoard event files in the workdir."""

    def __init__(self, workdir: epath.Path, write: bool):
        self.write = write
        self.jsonl = workdir / "metrics.jsonl"
        self.events = None
        if write:
            from vllava_jax.train.tensorboard import EventWriter

            self.events = EventWriter(workdir / "tensorboard")

    def log(self, step: int, scalars: dict[str, float]) -> None:
        if not self.write:
            return
        with self.jsonl.open("a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")
        self.events.scalars(step, scalars)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()


def train(config: ml_collections.ConfigDict, workdir: epath.PathLike, data: DataIterator,
          steps: int | None = None) -> RunResult:
    """Run (or resume) `config.total_steps` steps, or stop after `steps` more (tests)."""
    check_config(config)
    workdir = cli.make_output_dir(workdir, "--workdir")
    mesh_config = config.mesh.to_dict()
    devices = jax.devices()[: mesh_config.pop("num_devices", None) or None]
    mesh = make_mesh(**mesh_config, devices=devices)
    training = build_training(config, mesh)
    graphdef, optimizer, schedule = training.graphdef, training.optimizer, training.schedule
    frozen = jax.device_put(training.frozen, state_shardings(training.frozen, mesh))
    state = create_train_state(training.trainable, optimizer, mesh)

    manager = ocp.CheckpointManager(
        workdir / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=config.checkpoint_keep,
                                             save_interval_steps=config.checkpoint_every,
                                             enable_async_checkpointing=True),
    )
    resolved = resolved_config(config)
    if manager.latest_step() is not None:
        check_resume(workdir, resolved)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
        restored = manager.restore(manager.latest_step(), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
        state = restored.state
        data.set_state(restored.data)

    if jax.process_index() == 0:
        write_atomic(workdir / RUN_CONFIG, json.dumps(resolved, indent=2))
        keep_logged_steps(workdir / "metrics.jsonl", int(state.step))
    step_fn = None
    losses: list[float] = []
    skipped: list[np.ndarray] = []  # the data pipeline's per-batch counts of skipped samples
    rows = config.accum_steps * config.batch_size * jax.process_count()
    tokens = rows * config.max_length  # every position of every row runs through the decoder, labelled or not
    # MFU counts what the towers run on: the batch buffer's one video and one image per row
    frames = training.model_config.video_tower_config.num_frames
    peak = flops.peak_flops(config.get("peak_flops_per_device"))
    start_step = int(state.step)
    end_step = config.total_steps if steps is None else min(config.total_steps, start_step + steps)
    bar = tqdm(range(start_step, end_step), initial=start_step, total=config.total_steps,
               desc=partition.preset_name(config.trainable),
               disable=jax.process_index() != 0)
    logger = Logger(workdir, write=jax.process_index() == 0)
    try:
        for step in bar:
            batch = _stack(data, config.accum_steps, skipped)
            shardings = batch_shardings(global_shapes(batch), mesh)
            if step_fn is None:  # one compiled step, explicit in/out shardings
                step_fn = jit_train_step(graphdef, optimizer, state, frozen, shardings)
            began = time.perf_counter()
            with jax.set_mesh(mesh):  # activations and attention read it while the step is traced
                state, metrics = step_fn(state, frozen, to_global(batch, shardings))
            loss = float(metrics["loss"])
            seconds = time.perf_counter() - began
            if not math.isfinite(loss):
                raise TrainingDiverged(f"loss is {loss} at step {step + 1}; stopping. The last good checkpoint "
                                       f"(step {manager.latest_step()}) in {workdir / 'checkpoints'} is kept.")
            losses.append(loss)
            scalars = {"loss": loss, "skipped_samples": float(np.sum(skipped)) if skipped else 0.0,
                       "learning_rate": float(schedule(step)), "grad_norm": float(metrics["grad_norm"]),
                       "answer_tokens": float(metrics["tokens"]),
                       "tokens_per_second": tokens / seconds, "seconds_per_step": seconds}
            shown = dict(loss=f"{loss:.4f}", lr=f"{scalars['learning_rate']:.2e}", tok_s=f"{tokens / seconds:.0f}")
            if peak:  # unknown on CPUs (and unset in the config): no MFU rather than a made-up 0%
                model_flops = flops.step_flops(training.model_config, config.trainable, rows, config.max_length, frames,
                                               head_tokens=int(scalars["answer_tokens"]), images=1)
                scalars["mfu"] = model_flops / seconds / (peak * jax.device_count())
                shown["mfu"] = f"{scalars['mfu']:.1%}"
            if (step + 1) % config.log_every == 0 or step + 1 == end_step:
                logger.log(step + 1, scalars)
            bar.set_postfix(shown)
            manager.save(step + 1, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                          data=ocp.args.JsonSave(data.get_state())),
                         force=step + 1 == end_step)  # the last step of a run is always kept
    finally:
        try:
            logger.close()
        finally:
            manager.wait_until_finished()
            manager.close()
    return RunResult(losses, state, frozen, graphdef)
