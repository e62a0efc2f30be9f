"""Two processes (jax.distributed on a loopback coordinator, CPU collectives, 4 devices each) train
exactly as one process with all 8 devices: same losses."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))

WORKER = textwrap.dedent("""
    import os, sys, tempfile
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count={devices}"
    sys.path.insert(0, {root!r})
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if {processes} > 1:
        jax.distributed.initialize("127.0.0.1:{port}", num_processes={processes}, process_id={rank})
    from tests.test_train import tiny
    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.loop import train
    from vllava_jax.train.synthetic import SyntheticBatches

    config = tiny(total_steps=3, mesh=dict(data=2, fsdp=4, tensor=1, num_devices=0))
    data = SyntheticBatches(build_model_config(config), rows=8, length=48, process=({rank}, {processes}))
    result = train(config, {workdir!r}, data)
    print("LOSSES", jax.process_index(), result.losses)
""")


def run(processes: int, devices: int, tmp_path) -> list[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, "-c", WORKER.format(
        devices=devices, root=ROOT, port=port, processes=processes, rank=rank, workdir=str(tmp_path / "run"))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT) for rank in range(processes)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return [line.split(" ", 2)[2] for out, _ in outs for line in out.splitlines() if line.startswith("LOSSES")]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    single = run(1, 8, tmp_path / "one")
    double = run(2, 4, tmp_path / "two")
    assert len(double) == 2 and double[0] == double[1]
    one, two = eval(single[0]), eval(double[0])
    assert len(one) == 3 and all(abs(a - b) <= 2e-5 * abs(a) for a, b in zip(one, two)), (one, two)
