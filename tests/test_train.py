"""The trainer: frozen groups, resume after SIGKILL, NaN stop, CLI; meshes in test_train_mesh.py."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx
from tensorboardX.proto import event_pb2

import vllava_jax
from configs import train_tiny
from vllava_jax.train import partition
from vllava_jax.train.build import build_model_config
from vllava_jax.train.loop import TrainingDiverged, train
from vllava_jax.train.synthetic import SyntheticBatches

ROOT = os.path.dirname(os.path.dirname(__file__))


def read_scalars(directory) -> dict[tuple[str, int], float]:
    """(tag, step) -> value from every TFRecord-framed Event file under `directory`."""
    scalars = {}
    for path in sorted(directory.iterdir()):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                scalars[value.tag, event.step] = value.simple_value
    return scalars


def tiny(**overrides):
    config = train_tiny.get_config()
    config.max_length = 48
    config.checkpoint_every = 1
    config.update(overrides)
    return config


def flat_params(result):
    merged = nnx.merge(result.graphdef, result.state.params, result.frozen)
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(merged, nnx.Param))}


@pytest.mark.parametrize("stage, trained", [("stage1", ("projector",)), ("stage2", ("projector", "language_model"))])
def test_stage_trains_only_its_groups(tmp_path, stage, trained):
    config = tiny(trainable=partition.preset(stage), total_steps=3)
    model_config = build_model_config(config)
    before = {"/".join(map(str, p)): np.asarray(v[...]) for p, v in
              nnx.to_flat_state(vllava_jax.VideoLlava.random(model_config, seed=config.seed).state)}
    result = train(config, tmp_path, SyntheticBatches(model_config, rows=8, length=48))
    after = flat_params(result)
    assert before.keys() == after.keys()
    for name, value in after.items():
        changed = not np.array_equal(value, before[name])
        group = name.split("/")[0]
        if group in trained and name.endswith("kernel"):
            assert changed, f"{name} did not train"
        elif group not in trained:
            assert not changed, f"{name} is frozen in {stage} but changed"
    # no optimizer state for frozen parameters
    opt_leaves = sum(x.size for x in jax.tree.leaves(result.state.opt_state))
    trainable = sum(x.size for x in jax.tree.leaves(result.state.params))
    assert opt_leaves <= 2 * trainable + 16


KILLED_RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    from tests.test_train import tiny
    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.loop import train
    from vllava_jax.train.synthetic import SyntheticBatches

    class KillAfter(SyntheticBatches):
        def __next__(self):
            if self.index == 4:  # step 4 fetches batch 4 after step 3's checkpoint was started
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__next__()

    config = tiny(total_steps=6)
    train(config, {workdir!r}, KillAfter(build_model_config(config), rows=8, length=48))
""")


@pytest.mark.slow
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    config = tiny(total_steps=6)
    model_config = build_model_config(config)
    straight = train(config, tmp_path / "straight", SyntheticBatches(model_config, rows=8, length=48))

    workdir = tmp_path / "killed"
    run = subprocess.run([sys.executable, "-c", KILLED_RUN.format(root=ROOT, workdir=str(workdir))],
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and max(saved) <= 4
    resumed = train(config, workdir, SyntheticBatches(model_config, rows=8, length=48))
    done = 6 - len(resumed.losses)
    np.testing.assert_allclose(resumed.losses, straight.losses[done:], rtol=1e-5)
    for name, value in flat_params(resumed).items():
        np.testing.assert_allclose(value, flat_params(straight)[name], rtol=1e-5, atol=1e-6, err_msg=name)


class NanImagesAt(SyntheticBatches):
    """Synthetic batches whose batch `at` carries NaN pixels, so the step reading it has a NaN loss."""

    def __init__(self, *args, at: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.at = at

    def __next__(self):
        index, batch = self.index, super().__next__()
        if index == self.at:
            batch["pixel_values_images"] = np.full_like(batch["pixel_values_images"], np.nan)
        return batch


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = tiny(total_steps=6)
    model_config = build_model_config(config)
    with pytest.raises(TrainingDiverged, match="loss is nan at step 3"):
        train(config, tmp_path, NanImagesAt(model_config, rows=8, length=48, at=2))
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert max(saved) == 2


def test_cli_runs_resumes_and_logs(tmp_path):
    cmd = [sys.executable, "-m", "vllava_jax.train", "--config", os.path.join(ROOT, "configs/train_tiny.py"),
           "--workdir", str(tmp_path), "--config.max_length=48"]
    first = subprocess.run(cmd + ["--config.total_steps=2"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run(cmd + ["--config.total_steps=3"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert second.returncode == 0 and "step 3/3" in second.stderr, second.stderr[-2000:]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [int(json.loads(line)["step"]) for line in lines] == [1, 2, 3]
    events = read_scalars(tmp_path / "tensorboard")
    for line in lines:
        record = json.loads(line)
        for tag, value in record.items():
            if tag != "step":
                assert events[tag, record["step"]] == pytest.approx(value, rel=1e-6), tag


def test_mfu_is_logged_only_against_a_known_peak(tmp_path):
    config = tiny(total_steps=1)
    model_config = build_model_config(config)
    train(config, tmp_path / "cpu", SyntheticBatches(model_config, rows=8, length=48))
    config.peak_flops_per_device = 1e12
    train(config, tmp_path / "peak", SyntheticBatches(model_config, rows=8, length=48))
    cpu, peak = (json.loads((tmp_path / run / "metrics.jsonl").read_text()) for run in ("cpu", "peak"))
    assert "mfu" not in cpu  # a CPU has no table entry: no made-up 0%
    assert 0 < peak["mfu"] < 1 and peak["tokens_per_second"] > 0
