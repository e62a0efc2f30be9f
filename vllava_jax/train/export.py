"""A finished training run as a checkpoint dir that `load_pretrained`, generate and eval read.

The trainer keeps the trainable and frozen parameters apart (`loop.RunResult`); this merges them
back into one `VideoLlava` and writes the transformers layout plus the tokenizer files, so the
next stage (`init_checkpoint`) and the CLIs take it like any released checkpoint. A LoRA run's
adapters are folded into that export, or written alone in PEFT's format (`export_adapter`).
"""

from __future__ import annotations

import ml_collections
from etils import epath
from flax import nnx

import vllava_jax
from vllava_jax.checkpoint import peft
from vllava_jax.checkpoint.export import save_hf
from vllava_jax.modeling import lora
from vllava_jax.train.loop import RunResult, build_model_config, policy_from_config


def trained_model(config: ml_collections.ConfigDict, result: RunResult) -> vllava_jax.VideoLlava:
    """The run's model; a LoRA run's adapters stay attached, unmerged."""
    module = nnx.merge(result.graphdef, result.state.params, result.frozen)
    return vllava_jax.VideoLlava(build_model_config(config), policy_from_config(config), *nnx.split(module))


def export_run(config: ml_collections.ConfigDict, result: RunResult, directory: epath.PathLike,
               tokenizer_dir: epath.PathLike, overwrite: bool = True) -> epath.Path:
    """Write the run's final parameters to `directory` (transformers layout; adapters merged) with
    `tokenizer_dir`'s files."""
    module = trained_model(config, result).module
    lora.merge(module)
    model = vllava_jax.VideoLlava(build_model_config(config), policy_from_config(config), *nnx.split(module))
    return save_hf(model, directory, overwrite=overwrite, side_files_from=tokenizer_dir)


def export_adapter(config: ml_collections.ConfigDict, result: RunResult, directory: epath.PathLike,
                   overwrite: bool = True) -> epath.Path:
    """Write a LoRA run's adapters (and its projector, if it trained) as a PEFT adapter dir."""
    return peft.save_peft(trained_model(config, result).module, build_model_config(config), directory,
                          include_projector=bool(config.lora.get("train_projector", False)), force=overwrite)
