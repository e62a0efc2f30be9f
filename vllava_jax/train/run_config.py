"""What a training run records about itself in its workdir, and what a resumed run must agree with.

`train_config.json` holds the resolved config (paths absolute), written when a run starts:
`train.export` rebuilds the frozen weights and finds the tokenizer from it, and a resumed run is
compared with it (another stage, init checkpoint or model is refused; another schedule is said
aloud). `metrics.jsonl` loses the lines past the checkpoint a run resumes from, since those steps
run and log again.
"""

from __future__ import annotations

import json
import re
import sys

import ml_collections
from etils import epath

from vllava_jax.checkpoint.orbax import absolute
from vllava_jax.errors import ConfigError
from vllava_jax.jsonio import read_json
from vllava_jax.eval.cache import write_atomic
from vllava_jax.train import partition

RUN_CONFIG = "train_config.json"  # the resolved config of the run, beside its checkpoints (train.export reads it)
POSITIVE_KEYS = ("total_steps", "batch_size", "accum_steps", "max_length", "checkpoint_every", "checkpoint_keep",
                 "log_every", "learning_rate")
RESUME_MUST_MATCH = ("trainable", "init_checkpoint", "model")  # what the saved state's shapes depend on
SCHEDULE_KEYS = ("total_steps", "learning_rate", "warmup_ratio")


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fail naming the key for values the trainer cannot run with, before anything is built."""
    trainable = config.get("trainable")
    if isinstance(trainable, str) or not trainable or not all(isinstance(p, str) for p in trainable):
        raise ConfigError(f"config.trainable must be a non-empty list of parameter-path regexes, got {trainable!r} "
                          f"(presets: {sorted(partition.PRESETS)}, vllava_jax.train.partition.preset)")
    for pattern in trainable:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ConfigError(f"config.trainable: {pattern!r} is not a regex ({e})") from None
    for key in POSITIVE_KEYS:
        value = config.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"config.{key} must be a positive number, got {value!r}")
    if config.get("init_checkpoint") and not (epath.Path(config.init_checkpoint) / "config.json").exists():
        raise ConfigError(f"config.init_checkpoint {config.init_checkpoint}: no config.json there; pass a "
                          "checkpoint dir (convert's or train.export's output)")


def resolved_config(config: ml_collections.ConfigDict) -> dict:
    """The config as saved with the run: paths absolute, so the run can be exported from anywhere."""
    out = json.loads(config.to_json())
    if out.get("init_checkpoint"):
        out["init_checkpoint"] = str(absolute(out["init_checkpoint"]))
    if out.get("data", {}).get("tokenizer"):
        out["data"]["tokenizer"] = str(absolute(out["data"]["tokenizer"]))
    return out


def check_resume(workdir: epath.Path, config: dict) -> None:
    """A resumed run must be the same model and stage; a changed schedule is allowed but said aloud."""
    path = workdir / RUN_CONFIG
    if not path.exists():
        return
    saved = read_json(path, ConfigError)
    for key in RESUME_MUST_MATCH:
        if key in saved and saved.get(key) != config.get(key):
            raise ConfigError(f"{workdir} holds a run with config.{key}={saved.get(key)!r}, not {config.get(key)!r}; "
                              "resume with the same value or use another --workdir")
    changed = [f"{k} {saved.get(k)!r} -> {config.get(k)!r}" for k in SCHEDULE_KEYS if saved.get(k) != config.get(k)]
    if changed:
        print(f"warning: resuming {workdir} with another learning-rate schedule ({', '.join(changed)}); the "
              "steps still to run follow the new one", file=sys.stderr)


def keep_logged_steps(jsonl: epath.Path, last_step: int) -> None:
    """Drop metrics.jsonl lines past the checkpoint a run resumes from (they will be logged again)."""
    if not jsonl.exists():
        return
    lines = jsonl.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= last_step]
    if len(kept) != len(lines):
        write_atomic(jsonl, "".join(kept))
