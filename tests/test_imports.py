"""The package and the accelerator benchmark import where only the model's dependencies are installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(__file__))

BLOCKED = ("av", "grain", "tensorflow_datasets", "tensorflow", "ml_collections")


def test_model_and_benchmark_import_without_data_dependencies():
    """PyAV, Grain, TFDS and ml_collections are imported only by the code that needs them."""
    script = textwrap.dedent(f"""
        import sys

        for name in {BLOCKED!r}:
            sys.modules[name] = None  # as if not installed: importing it raises ImportError

        import vllava_jax
        import vllava_jax.generation, vllava_jax.train.state
        import benchmarks.accelerator
        proc = vllava_jax.Processor  # the class imports; decoding a video would need PyAV
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ROOT})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
