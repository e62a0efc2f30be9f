"""A training run as a checkpoint dir that `load_pretrained`, generate, eval and convert read.

    python -m vllava_jax.train.export --workdir DIR [--step N] --dst MODEL_DIR [--force]

The trainer keeps the trainable and frozen parameters apart (`loop.RunResult`) and its checkpoints
hold only the trainable ones and the optimizer state; the frozen ones come from the run's
`init_checkpoint` (or its seeded random init), recorded with the resolved config in
`DIR/train_config.json`. Export merges them back into one `VideoLlava` and writes the transformers
layout plus the tokenizer files, so the next stage (`init_checkpoint`) and the CLIs take it like any
released checkpoint. A LoRA run's
adapters are folded into that export, or written alone in PEFT's format (`export_adapter`).
"""

from __future__ import annotations

import json

import jax
import ml_collections
from etils import epath
from flax import nnx

import vllava_jax
from vllava_jax import cli
from vllava_jax.checkpoint import peft
from vllava_jax.checkpoint.write import check_destination, save_hf
from vllava_jax.checkpoint.orbax import absolute
from vllava_jax.errors import CheckpointError, ConfigError
from vllava_jax.modeling import lora
from vllava_jax.train import adapters
from vllava_jax.sharding import make_mesh
from vllava_jax.train.build import build_model_config, build_training, policy_from_config
from vllava_jax.train.loop import RunResult
from vllava_jax.train.run_config import RUN_CONFIG
from vllava_jax.train.state import abstract_train_state


def trained_model(config: ml_collections.ConfigDict, result: RunResult) -> vllava_jax.VideoLlava:
    """The run's model; a LoRA run's adapters stay attached, unmerged."""
    module = nnx.merge(result.graphdef, result.state.params, result.frozen)
    return vllava_jax.VideoLlava(build_model_config(config), policy_from_config(config), *nnx.split(module))


def export_run(config: ml_collections.ConfigDict, result: RunResult, directory: epath.PathLike,
               tokenizer_dir: epath.PathLike | None, overwrite: bool = True) -> epath.Path:
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
                          include_projector=adapters.trains_projector(config), force=overwrite)


def run_config(workdir: epath.Path) -> ml_collections.ConfigDict:
    """The resolved config the trainer saved in `workdir`."""
    path = workdir / RUN_CONFIG
    if not path.exists():
        raise ConfigError(f"--workdir {workdir}: no {RUN_CONFIG}; pass the --workdir of a vllava_jax.train run")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def restore_run(config: ml_collections.ConfigDict, workdir: epath.Path, step: int | None) -> RunResult:
    """The run's parameters at `step` (default: its latest checkpoint), on this host's first device."""
    import orbax.checkpoint as ocp

    with ocp.CheckpointManager(absolute(workdir / "checkpoints")) as manager:
        steps = sorted(manager.all_steps())
        if not steps:
            raise CheckpointError(f"--workdir {workdir}: no complete checkpoint in {workdir / 'checkpoints'} yet")
        if step is not None and step not in steps:
            raise CheckpointError(f"--step {step}: {workdir / 'checkpoints'} holds steps {steps}")
        step = steps[-1] if step is None else step
        training = build_training(config)
        abstract = abstract_train_state(training.trainable, training.optimizer, make_mesh(devices=jax.devices()[:1]))
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    return RunResult([], restored.state, training.frozen, training.graphdef)


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m vllava_jax.train.export", description=__doc__)
    p.add_argument("--workdir", required=True, help="the training run's --workdir")
    p.add_argument("--step", type=int, help="which checkpoint (default: the latest)")
    p.add_argument("--dst", required=True, help="model dir to write; appears only when complete")
    p.add_argument("--force", action="store_true", help="replace --dst if it is an old checkpoint")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    workdir = epath.Path(args.workdir)
    if not workdir.is_dir():
        raise ConfigError(f"--workdir {workdir}: no such directory")
    config = run_config(workdir)
    check_destination(args.dst, args.force)
    tokenizer = config.data.get("tokenizer") or config.get("init_checkpoint") or None
    result = restore_run(config, workdir, args.step)
    path = export_run(config, result, args.dst, tokenizer, overwrite=args.force)
    print(f"wrote {path}: step {int(result.state.step)} of {workdir}"
          + ("" if tokenizer else " (no tokenizer files: the run had no init_checkpoint or data.tokenizer)"))
    return 0


if __name__ == "__main__":
    cli.run(main)
