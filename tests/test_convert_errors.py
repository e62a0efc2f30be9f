"""Conversion never runs a checkpoint's code and never leaves a half-written dir that loads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

import vllava_jax
from tests import oracle
from vllava_jax.checkpoint.torch_bin import TorchBinReader


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("zipped", [True, False])
def test_malicious_pickle_raises_without_running(tmp_path, zipped):
    marker = tmp_path / "pwned"
    torch.save({"weight": Payload(marker)}, tmp_path / "pytorch_model.bin", _use_new_zipfile_serialization=zipped)
    with pytest.raises(vllava_jax.CheckpointError, match="pytorch_model.bin"):
        TorchBinReader(tmp_path)
    assert not marker.exists()


def test_killed_conversion_leaves_nothing_that_loads(tmp_path):
    oracle.save_tiny_model(tmp_path / "hf")
    script = f"""
import os, signal
from vllava_jax import convert
from vllava_jax.checkpoint import safetensors_io
read = safetensors_io.SafetensorsReader.read
count = [0]
def dying_read(self, name):
    count[0] += 1
    if count[0] == 60:
        os.kill(os.getpid(), signal.SIGKILL)
    return read(self, name)
safetensors_io.SafetensorsReader.read = dying_read
convert.main(["--src", {str(tmp_path / "hf")!r}, "--dst", {str(tmp_path / "ours")!r}])
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "ours").exists()
    leftovers = [p for p in tmp_path.iterdir() if p.name != "hf"]
    assert leftovers
    for path in leftovers:
        with pytest.raises(vllava_jax.VllavaError):
            vllava_jax.load_pretrained(path)
