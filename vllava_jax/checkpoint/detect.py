"""Which of the three checkpoint formats a dir holds, from its config.json and the files beside it.

transformers (`model_type: video_llava` + safetensors or .bin), the original Video-LLaVA (LLaVA
config.json with `mm_*_tower`), and ours (config.json + an Orbax `params/` dir).
"""

from __future__ import annotations

from etils import epath

from vllava_jax.checkpoint import original
from vllava_jax.config import CONFIG_MISSING
from vllava_jax.errors import CheckpointError, ConfigError
from vllava_jax.jsonio import read_json

FORMATS = ("transformers", "original", "ours")
PARAMS_DIR = "params"  # ours: the Orbax pytree of parameters, beside config.json


def raw_config(path: epath.Path) -> dict:
    """A checkpoint dir's config.json as written (transformers' or the original's keys)."""
    return read_json(path / "config.json", ConfigError, missing=CONFIG_MISSING)


def detect(path: epath.PathLike) -> str:
    """'transformers', 'original' or 'ours'."""
    path = epath.Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; pass a checkpoint dir holding config.json")
    if original.is_original(raw_config(path)):
        return "original"
    if (path / PARAMS_DIR).is_dir():
        return "ours"
    return "transformers"
