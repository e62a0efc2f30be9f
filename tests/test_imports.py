"""The package, and the accelerator benchmark end to end (`--tiny`), where only the model's
dependencies are installed: PyAV, Grain, TFDS and ml_collections are imported only by the code that
needs them."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))

BLOCKED = ("av", "grain", "tensorflow_datasets", "tensorflow", "ml_collections")

FIGURES = ["measured bf16 matmul peak", "measured memory bandwidth", "train step compile", "train step-0 loss",
           "train first step incl. compile/warm-up", "train step",
           "train model TFLOP per step (ours: labelled logits; ref: every logit)", "train MFU vs dense bf16 peak",
           "train MFU vs measured bf16 matmul", "train step reading weights in place (ours) vs as shipped",
           "serve 2 in flight vs 1 at a time (ours)"]
PER_BATCH = ["generate b{} first call incl. compile", "prefill b{}",
             "prefill b{} reading weights in place (ours) vs as shipped", "decode b{}",
             "stream b{} (ours) vs generate (ours)", "decode b{} fraction of memory roofline"]


def run_blocked(code: str, tmp_path) -> subprocess.CompletedProcess:
    """`code` run in a fresh interpreter in which importing any BLOCKED module fails, as if not installed."""
    script = f"import sys\nfor name in {BLOCKED!r}:\n    sys.modules[name] = None\n" + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1"})


def test_tiny_accelerator_benchmark_runs_without_data_dependencies(tmp_path):
    out = tmp_path / "out"
    result = run_blocked(f"""
        import runpy
        import vllava_jax
        vllava_jax.Processor  # the class is there; decoding a video would import PyAV
        sys.argv = ["accelerator", "--tiny", "--out", {str(out)!r}]
        runpy.run_module("benchmarks.accelerator", run_name="__main__")
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "accelerator.json").read_text())
    assert report["failed"] == {}
    figures = report["figures"]
    batches = report["meta"]["shapes"]["generation_batches"]
    expected = FIGURES + [name.format(b) for b in batches for name in PER_BATCH]
    assert sorted(figures) == sorted(expected)
    for name in expected:  # values only: tiny timings are noise (a decode rate may even come out negative)
        if name != "train MFU vs dense bf16 peak":  # no dense peak is known for a CPU
            assert math.isfinite(figures[name]["ours"]), name
    for name in ["train step-0 loss", "train step", "prefill b1", "decode b1"]:
        assert math.isfinite(figures[name]["reference"]), name
    loss = figures["train step-0 loss"]
    assert abs(loss["ours"] - loss["reference"]) < 0.05 * loss["reference"]  # same weights, same batch
    assert "| train step (s) |" in result.stdout


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    """A one-shot device run keeps what it can: the train step failing (as an out-of-memory or a
    refused kernel would) leaves its traceback in the JSON, generation and serving still run, and
    the exit status says something failed."""
    from benchmarks import accelerator

    def refused(*_):
        raise RuntimeError("kernel refused by the device")

    monkeypatch.setattr(accelerator, "train_figures", refused)
    monkeypatch.setattr(sys, "argv", ["accelerator", "--tiny", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_status:
        accelerator.main()
    assert exit_status.value.code == 1
    report = json.loads((tmp_path / "accelerator.json").read_text())
    assert list(report["failed"]) == ["train"]
    assert "RuntimeError: kernel refused by the device" in report["failed"]["train"]
    assert "train step" not in report["figures"]
    assert {"decode b1", "decode b2", "serve 2 in flight vs 1 at a time (ours)"} <= set(report["figures"])


def test_sections_measure_only_what_they_name(tmp_path, monkeypatch):
    """A rerun of what a cut device run missed: --sections serving loads the generation models and
    measures the engine only (the device's measured peaks always come first)."""
    from benchmarks import accelerator

    monkeypatch.setattr(sys, "argv", ["accelerator", "--tiny", "--out", str(tmp_path), "--sections", "serving"])
    accelerator.main()
    report = json.loads((tmp_path / "accelerator.json").read_text())
    assert report["failed"] == {}
    assert sorted(report["figures"]) == sorted(["measured bf16 matmul peak", "measured memory bandwidth",
                                                "serve 2 in flight vs 1 at a time (ours)"])


@pytest.mark.parametrize("flags, message", [
    (["--llm-layers", "0"], "--llm-layers must be at least 1, got 0"),
    (["--out", "{file}"], "--out {file} is a file, not a directory for accelerator.json"),
])
def test_a_mistaken_flag_is_one_error_line_and_leaves_files_alone(flags, message, tmp_path, monkeypatch, capsys):
    from benchmarks import accelerator

    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    flags = [f.format(file=mine) for f in flags]
    monkeypatch.setattr(sys, "argv", ["accelerator", "--tiny", *flags])
    with pytest.raises(SystemExit) as exit_status:
        accelerator.main()
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"accelerator: error: {message.format(file=mine)}"
    assert mine.read_text() == "mine"
