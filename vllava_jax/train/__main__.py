"""Train Video-LLaVA: `python -m vllava_jax.train --config configs/NAME.py --workdir DIR [--config.key=value]`.

What trains is `config.trainable`, parameter-path regexes (`train.partition.preset`: stage 1 the
projector, stage 2 the projector and the LLM, the towers frozen). A run training LoRA adapters
(preset `lora`, and the projector if listed) writes them to DIR/adapter in PEFT's format at the end. The run resumes from the latest complete checkpoint in
DIR. Multi-host jobs (TPU pod slices, several GPU hosts) start the same command on every host; `--distributed` calls
`jax.distributed.initialize()` first, which finds the coordinator from the environment.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from vllava_jax import cli
from vllava_jax.errors import UsageError

_CONFIG = config_flags.DEFINE_config_file("config", None, "a configs/*.py file; override keys with --config.key=value")
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, metrics.jsonl and TensorBoard events go here")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "call jax.distributed.initialize() (multi-host jobs); "
                                  "on TPU pods and SLURM it finds the coordinator itself")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "with --distributed elsewhere: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "with --distributed elsewhere: processes in the job")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "with --distributed elsewhere: this process's index")
PROG = "python -m vllava_jax.train"


def parse_flags(argv: list[str]) -> None:
    """absl's flags, with --help answered (exit 0) and every flag mistake raised as `UsageError`."""
    if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv):
        print(f"{__doc__}\nflags:\n{flags.FLAGS.main_module_help()}\n  --debug: on an error, print the traceback "
              f"too (or set {cli.DEBUG_ENV}=1)")
        sys.exit(0)
    cli.parse_config_flags(lambda: flags.FLAGS([PROG, *argv]), lambda: _CONFIG.value, PROG)
    for name, flag in (("config", _CONFIG), ("workdir", _WORKDIR)):
        if flag.value is None:
            raise UsageError(f"--{name} is required (see {PROG} --help)")


def main(argv: list[str]) -> None:
    parse_flags(argv)
    logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
    import jax

    if _DISTRIBUTED.value:
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    from vllava_jax.train import partition
    from vllava_jax.train.data import make_data
    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.loop import train
    from vllava_jax.train.run_config import check_config

    config = _CONFIG.value
    check_config(config)
    result = train(config, _WORKDIR.value, make_data(config, build_model_config(config)))
    if partition.trains_adapters(config.trainable) and jax.process_index() == 0:
        from vllava_jax.train.export import export_adapter

        print(f"adapter (PEFT format): {export_adapter(config, result, f'{_WORKDIR.value}/adapter')}", file=sys.stderr)
    if jax.process_index() == 0:
        last = f"{result.losses[-1]:.4f}" if result.losses else "n/a (already complete)"
        print(f"{partition.preset_name(config.trainable)}: step {int(result.state.step)}/{config.total_steps}, last loss {last}, "
              f"checkpoints in {_WORKDIR.value}/checkpoints", file=sys.stderr)


if __name__ == "__main__":
    cli.run(main, resumable=True)
