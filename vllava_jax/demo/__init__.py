"""The Quickstart's demo, apart from the package it shows off: `python -m vllava_jax.demo --workdir DIR`
trains, evaluates and queries a tiny Video-LLaVA on the synthetic shapes world (`data_pipelines.shapes`).

`run` is the pipeline (its phases are public for `benchmarks/shapes_ablation.py`), `plot` its figure.
"""

from vllava_jax.demo.run import evaluate, example_answer, main, prepare, train_stage  # noqa: F401
