"""Write a model as a transformers-format checkpoint dir, atomically (a crash leaves no half dir)."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
from etils import epath
from flax import nnx
from safetensors.numpy import save_file

from vllava_jax.checkpoint import hf
from vllava_jax.errors import CheckpointError


def save_hf(model, directory: epath.PathLike, overwrite: bool = False) -> epath.Path:
    """config.json + model.safetensors that `VideoLlavaForConditionalGeneration.from_pretrained` reads."""
    directory = epath.Path(directory)
    if directory.exists() and not overwrite:
        raise CheckpointError(f"{directory} exists; pass overwrite=True (--force) to replace it")
    staging = directory.parent / f".{directory.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    params = {path: np.asarray(jax.device_get(v[...])) for path, v in nnx.to_flat_state(model.state)}
    tensors = dict(hf.torch_tensors(model.config, params))
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2))
    if directory.exists():
        shutil.rmtree(directory)
    staging.rename(directory)
    return directory
