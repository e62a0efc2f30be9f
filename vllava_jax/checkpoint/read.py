"""A checkpoint dir of any format opened as our config and our parameter leaves, read on demand.

The caller passes the parameter shapes it expects (`modeling.video_llava.parameter_shapes`, or the
abstract state it is about to fill), so reading never builds a model; a checkpoint that does not
fit them fails here with one error listing every missing, unexpected and mis-shaped tensor.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from etils import epath

from vllava_jax.checkpoint import hf, orbax, original
from vllava_jax.checkpoint.detect import PARAMS_DIR, detect, raw_config
from vllava_jax.checkpoint.safetensors_io import SafetensorsReader
from vllava_jax.checkpoint.streamed import Path, Streamed
from vllava_jax.checkpoint.torch_bin import TorchBinReader
from vllava_jax.config import VideoLlavaConfig


def tensor_reader(path: epath.Path):
    """safetensors shards if any, else PyTorch .bin shards."""
    if any(path.glob("*.safetensors")) or not any(path.glob("*.bin")):
        return SafetensorsReader(path)
    return TorchBinReader(path)


@dataclasses.dataclass(frozen=True)
class Source:
    path: epath.Path
    format: str
    config: VideoLlavaConfig


def open_source(path: epath.PathLike) -> Source:
    path = epath.Path(path)
    fmt = detect(path)
    if fmt == "original":
        return Source(path, fmt, original.config(raw_config(path), path, tensor_reader(path)))
    return Source(path, fmt, VideoLlavaConfig.from_json(path / "config.json"))


def leaves(source: Source, shapes: dict[Path, tuple[int, ...]], dtype=None) -> dict[Path, Streamed]:
    """Every parameter of `source` in our layout, shaped as `shapes` says.

    `dtype` None keeps ours as saved (PyTorch sources need one).
    """
    if source.format == "ours":
        saved = orbax.leaves(source.path / PARAMS_DIR)
        orbax.check(source.path, {p: leaf.shape for p, leaf in saved.items()}, shapes)
        return {p: dataclasses.replace(leaf, dtype=np.dtype(dtype or leaf.dtype)) for p, leaf in saved.items()}
    dtype = np.dtype(dtype)
    reader = tensor_reader(source.path)
    canonical = original.canonical_key if source.format == "original" else hf.canonical_key
    out = {}
    for entry, keys in hf.plan(reader, source.config, shapes, canonical):
        part_shape = hf.layer_shape(entry, shapes[entry.ours])

        def read(i, keys=keys, transform=entry.transform, part_shape=part_shape):
            return transform.to_ours(reader.read(keys[0 if i is None else i]), part_shape).astype(dtype)

        out[entry.ours] = Streamed(tuple(shapes[entry.ours]), dtype, entry.stacked, read)
    return out
