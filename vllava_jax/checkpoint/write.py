"""Writing checkpoint dirs: ours (Orbax params) and transformers' (safetensors), atomically.

Every writer fills a staging dir beside the destination that is renamed into place only when
complete (`staged`), after `check_destination` made sure replacing it loses nothing of the user's;
the tokenizer and processor files travel with the weights (`copy_side_files`).

transformers' layout is what its own `save_pretrained` writes (`language_model.model.*`,
`language_model.lm_head.weight`; see `hf.on_disk_key`), sharded like it (`model-0000k-of-0000N`
+ `model.safetensors.index.json`) when larger than `max_shard_bytes`. Each tensor is read from
its source only when its bytes are due, so memory holds one tensor, never the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from typing import Iterator

import numpy as np
from etils import epath

from vllava_jax.checkpoint import hf, orbax, placeholder_vocab
from vllava_jax.checkpoint.detect import PARAMS_DIR
from vllava_jax.checkpoint.read import Source
from vllava_jax.checkpoint.safetensors_io import shard_files, write_shard
from vllava_jax.checkpoint.streamed import Path, Streamed, in_memory
from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import CheckpointError

DEFAULT_MAX_SHARD_BYTES = 5 * 10**9
SIDE_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "preprocessor_config.json", "processor_config.json",
              "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja", "generation_config.json")


def copy_side_files(src: epath.Path, dst: epath.Path) -> list[str]:
    """Copy the tokenizer and processor files that exist in `src`; returns their names."""
    copied = [name for name in SIDE_FILES if (src / name).exists()]
    for name in copied:
        (src / name).copy(dst / name)
    return copied


def _is_checkpoint_file(name: str) -> bool:
    """What a checkpoint dir we write (or transformers writes) holds, and nothing a user keeps beside it."""
    return (name in ("config.json", PARAMS_DIR, "model.safetensors.index.json", "pytorch_model.bin.index.json")
            or name in SIDE_FILES or name.endswith((".safetensors", ".bin")))


def check_destination(dst: epath.PathLike, force: bool, sources: tuple[epath.PathLike, ...] = ()) -> None:
    """Refuse a `dst` whose replacement would lose anything but an old checkpoint.

    `force` replaces only an empty dir or one that holds a checkpoint and nothing else, never a file,
    a dir with other files, nor a source being read (or a dir holding one).
    """
    dst = epath.Path(dst)
    for source in sources:
        source = epath.Path(source).resolve()
        if dst.resolve() == source or dst.resolve() in source.parents:
            raise CheckpointError(f"--dst {dst} is the source checkpoint {source} or holds it; writing there "
                                  "would delete it: pick another --dst")
    blocker = next((p for p in dst.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CheckpointError(f"--dst {dst}: {blocker} is a file, not a directory")
    if not dst.exists():
        return
    if not force:
        raise CheckpointError(f"{dst} exists; pass --force (force=True) to replace it")
    if not dst.is_dir():
        raise CheckpointError(f"--dst {dst} is a file, not a checkpoint dir; --force replaces only a checkpoint dir")
    entries = [p.name for p in dst.iterdir()]
    others = sorted(name for name in entries if not _is_checkpoint_file(name))
    if others or (entries and "config.json" not in entries):
        held = f"it holds {', '.join(others[:5])}" if others else "it has no config.json"
        raise CheckpointError(f"--dst {dst} is not a checkpoint dir ({held}); --force replaces only a checkpoint "
                              "dir: pick another --dst")


@contextlib.contextmanager
def staged(dst: epath.PathLike, force: bool, sources: tuple[epath.PathLike, ...] = ()) -> Iterator[epath.Path]:
    """A fresh dir beside `dst` that becomes `dst` only when the block completes.

    A conversion killed half-way leaves only `.<name>.partial` (no config.json, which is written
    last), never a `dst` that loads as if complete; an existing `dst` is replaced only with `force`,
    and only when `check_destination` finds it is an old checkpoint, not one of the `sources`.
    """
    dst = epath.Path(dst)
    check_destination(dst, force, sources)
    staging = dst.parent / f".{dst.name}.partial"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if dst.exists():
        shutil.rmtree(dst)
    staging.rename(dst)


def write_ours(dst: epath.PathLike, source: Source, params: dict[Path, Streamed],
               force: bool = False, on_bytes=lambda n: None) -> epath.Path:
    """Write `params` (from `leaves(source)`) in our format at `dst`: Orbax params, config.json, tokenizer files."""
    with staged(dst, force, sources=(source.path,)) as tmp:
        orbax.save(tmp / PARAMS_DIR, params, on_bytes)
        copy_side_files(source.path, tmp)
        (tmp / "config.json").write_text(json.dumps(source.config.to_hf_dict(), indent=2))
    return epath.Path(dst)


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
    params: dict[Path, Streamed],
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
    return write_hf(directory, model.config, in_memory(model.state), force=overwrite, **kwargs)
