"""Write a model as a transformers-format checkpoint dir, streamed tensor by tensor, atomically.

Output is the layout transformers' own `save_pretrained` writes (`language_model.model.*`,
`language_model.lm_head.weight`; see `hf.on_disk_key`), sharded like it (`model-0000k-of-0000N`
+ `model.safetensors.index.json`) when larger than `max_shard_bytes`. Each tensor is read from
its source only when its bytes are due, so memory holds one tensor, never the model.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from etils import epath

from vllava_jax.checkpoint import hf, orbax, placeholder_vocab
from vllava_jax.checkpoint.formats import copy_side_files, staged
from vllava_jax.checkpoint.safetensors_io import shard_files, write_shard
from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import CheckpointError

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


def transformers_config(config: VideoLlavaConfig, drop_temporal: bool = False) -> VideoLlavaConfig:
    """The config transformers can hold: one vision config for both towers, no temporal attention.

    Never drops weights silently: a temporal video tower is refused unless `drop_temporal`.
    """
    video = config.video_vision_config
    if video is None:
        return config
    if dataclasses.replace(video, add_time_attn=False, num_frames=config.vision_config.num_frames) != config.vision_config:
        raise CheckpointError(f"the video tower ({video}) differs from the image tower ({config.vision_config}); "
                              "transformers' VideoLlava has one vision_config for both")
    if video.add_time_attn and not drop_temporal:
        raise CheckpointError(
            "this model's video tower has LanguageBind temporal attention (temporal_attn, temporal_layer_norm1, "
            "temporal_embedding in every layer), which transformers' VideoLlava has no place for: exporting "
            "would drop those weights and video outputs would change. Pass --drop-temporal (drop_temporal=True) "
            "to export without them.")
    return dataclasses.replace(config, video_vision_config=None)


def write_hf(
    directory: epath.PathLike,
    config: VideoLlavaConfig,
    params: dict[tuple[str, ...], orbax.Streamed],
    *,
    dtype=None,
    side_files_from: epath.PathLike | None = None,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    drop_temporal: bool = False,
    force: bool = False,
    on_bytes=lambda n: None,
) -> epath.Path:
    """config.json + safetensors shard(s) that `VideoLlavaForConditionalGeneration.from_pretrained` reads.

    A model whose placeholder ids lie past its vocabulary (the original Video-LLaVA) gets the
    tokens, rows and processor files transformers needs to run it (`placeholder_vocab`).
    """
    config = transformers_config(config, drop_temporal)
    grown = placeholder_vocab.growth(config)
    tensors = []
    for entry in hf.name_map(config):
        leaf = params[entry.ours]
        shape, out_dtype = hf.torch_shape(entry, leaf.shape), np.dtype(dtype or leaf.dtype)
        for index, name in zip(leaf.parts, entry.torch):
            produce = lambda leaf=leaf, index=index, t=entry.transform: t.to_torch(np.asarray(leaf.read(index)))
            if grown is not None and entry.ours in placeholder_vocab.VOCAB_ROWS:
                shape, produce = (grown.new, *shape[1:]), lambda read=produce: grown.rows(read())
            tensors.append((hf.on_disk_key(name), shape, out_dtype, produce))
    shards = shard_files([int(np.prod(s)) * d.itemsize for _, s, d, _ in tensors], max_shard_bytes)
    n = shards[-1] + 1
    files = ["model.safetensors"] if n == 1 else [f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)]
    sources = () if side_files_from is None else (side_files_from,)
    with staged(directory, force, sources) as tmp:
        if side_files_from is not None:  # first: a tokenizer the added tokens clash with fails before any shard
            copy_side_files(epath.Path(side_files_from), tmp)
        if grown is not None:
            placeholder_vocab.add_tokens(tmp, grown)
            placeholder_vocab.write_processor_files(tmp, config)
            config = grown.config(config)
        for k, file in enumerate(files):
            write_shard(tmp / file, [t for t, s in zip(tensors, shards) if s == k], on_bytes)
        if n > 1:
            total = sum(int(np.prod(s)) * d.itemsize for _, s, d, _ in tensors)
            index = {"metadata": {"total_size": total},
                     "weight_map": {t[0]: files[s] for t, s in zip(tensors, shards)}}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        (tmp / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    return epath.Path(directory)


def save_hf(model, directory: epath.PathLike, overwrite: bool = False, **kwargs) -> epath.Path:
    """Export an in-memory `VideoLlava` (see `write_hf` for the keyword arguments)."""
    return write_hf(directory, model.config, orbax.in_memory(model.state), force=overwrite, **kwargs)
