"""A finished training run as a checkpoint dir that `load_pretrained`, generate and eval read.

The trainer keeps the trainable and frozen parameters apart (`loop.RunResult`); this merges them
back into one `VideoLlava` and writes the transformers layout plus the tokenizer files, so the
next stage (`init_checkpoint`) and the CLIs take it like any released checkpoint.
"""

from __future__ import annotations

import ml_collections
from etils import epath
from flax import nnx

import vllava_jax
from vllava_jax.checkpoint.export import save_hf
from vllava_jax.train.loop import RunResult, build_model_config, policy_from_config


def trained_model(config: ml_collections.ConfigDict, result: RunResult) -> vllava_jax.VideoLlava:
    module = nnx.merge(result.graphdef, result.state.params, result.frozen)
    return vllava_jax.VideoLlava(build_model_config(config), policy_from_config(config), *nnx.split(module))


def export_run(config: ml_collections.ConfigDict, result: RunResult, directory: epath.PathLike,
               tokenizer_dir: epath.PathLike, overwrite: bool = True) -> epath.Path:
    """Write the run's final parameters to `directory` (transformers layout) with `tokenizer_dir`'s files."""
    return save_hf(trained_model(config, result), directory, overwrite=overwrite, side_files_from=tokenizer_dir)
