"""The train step compiles once however it is called: state and step built by `train.state`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec, SingleDeviceSharding

import vllava_jax
from configs import train_tiny
from vllava_jax.sharding import make_mesh
from vllava_jax.train import partition
from vllava_jax.train.build import build_model_config
from vllava_jax.train.optimizer import make_optimizer
from vllava_jax.train.state import create_train_state, jit_train_step, place_on_mesh
from vllava_jax.train.synthetic import SyntheticBatches


def count_compiles():
    """A list that grows by one entry per XLA compilation from now on, and a function to stop counting."""
    compiles = []

    def listener(event: str, seconds: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(seconds)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return compiles, lambda: jax.monitoring.unregister_event_duration_listener(listener)


@pytest.mark.parametrize("committed", [False, True], ids=["fresh-params", "params-on-a-device"])
def test_three_steps_compile_once(committed):
    """Whether the caller's parameters are uncommitted (a fresh model) or committed to a device (as
    `load_pretrained` places them; then a state built ad hoc, with an uncommitted step counter,
    compiled the step again on call 2)."""
    config = build_model_config(train_tiny.get_config())
    model = vllava_jax.VideoLlava.random(config, seed=0)
    mesh = make_mesh(devices=jax.devices()[:1])
    graphdef, trainable, frozen = partition.split_trainable(model.module, partition.preset("stage2"))
    if committed:
        trainable, frozen = jax.device_put((trainable, frozen), SingleDeviceSharding(jax.devices()[0]))
    optimizer, _ = make_optimizer(1e-3, 10)
    state = create_train_state(trainable, optimizer, mesh)
    frozen = place_on_mesh(frozen, mesh)
    step = jit_train_step(graphdef, optimizer, state, frozen, NamedSharding(mesh, PartitionSpec()))
    data = SyntheticBatches(config, rows=2, length=32)
    batches = [jax.tree.map(lambda x: jnp.asarray(x[None]), next(data)) for _ in range(3)]
    assert state.step.dtype == jnp.int32 and not state.step.weak_type

    compiles, stop = count_compiles()
    try:
        losses = []
        for batch in batches:
            state, metrics = step(state, frozen, batch)
            losses.append(float(metrics["loss"]))
    finally:
        stop()
    assert len(compiles) == 1, f"{len(compiles)} compilations for 3 steps"
    assert int(state.step) == 3 and np.isfinite(losses).all()
