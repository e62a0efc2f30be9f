"""What a checkpoint dir is: which of the three formats, its config, its weights as our leaves.

transformers (`model_type: video_llava` + safetensors or .bin), the original Video-LLaVA
(LLaVA config.json with `mm_*_tower`), and ours (config.json + an Orbax `params/` dir) are told
apart by one function, `detect`. Also here: the tokenizer/processor files that travel beside the
weights, and the staging dir that makes writing a checkpoint atomic.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from typing import Iterator

import numpy as np
from etils import epath
from flax import nnx

from vllava_jax.checkpoint import hf, orbax, original
from vllava_jax.checkpoint.safetensors_io import SafetensorsReader
from vllava_jax.checkpoint.torch_bin import TorchBinReader
from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.config import CONFIG_MISSING
from vllava_jax.errors import CheckpointError, ConfigError
from vllava_jax.jsonio import read_json
from vllava_jax.modeling.video_llava import VideoLlavaModel

FORMATS = ("transformers", "original", "ours")
PARAMS_DIR = "params"
SIDE_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "preprocessor_config.json", "processor_config.json",
              "video_preprocessor_config.json", "chat_template.json", "chat_template.jinja", "generation_config.json")


def _raw_config(path: epath.Path) -> dict:
    return read_json(path / "config.json", ConfigError, missing=CONFIG_MISSING)


def detect(path: epath.PathLike) -> str:
    """'transformers', 'original' or 'ours', from config.json and the files beside it."""
    path = epath.Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; pass a checkpoint dir holding config.json")
    raw = _raw_config(path)
    if original.is_original(raw):
        return "original"
    if (path / PARAMS_DIR).is_dir():
        return "ours"
    return "transformers"


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
        return Source(path, fmt, original.config(_raw_config(path), path, tensor_reader(path)))
    return Source(path, fmt, VideoLlavaConfig.from_json(path / "config.json"))


def leaves(source: Source, shapes: dict[tuple[str, ...], tuple[int, ...]], dtype=None) -> dict[tuple[str, ...], orbax.Streamed]:
    """Every parameter of `source` in our layout, read on demand; a bad checkpoint fails here, listing what is wrong.

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

        out[entry.ours] = orbax.Streamed(tuple(shapes[entry.ours]), dtype, entry.stacked, read)
    return out


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


def abstract_shapes(config: VideoLlavaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Our parameter shapes for `config`, without allocating them."""
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(config, DTypePolicy(), nnx.Rngs(0)))
    return {p: tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(abstract))}


def write_ours(dst: epath.PathLike, source: Source, params: dict[tuple[str, ...], orbax.Streamed],
               force: bool = False, on_bytes=lambda n: None) -> epath.Path:
    """Write `params` (from `leaves(source)`) in our format at `dst`: Orbax params, config.json, tokenizer files."""
    with staged(dst, force, sources=(source.path,)) as tmp:
        orbax.save(tmp / PARAMS_DIR, params, on_bytes)
        copy_side_files(source.path, tmp)
        (tmp / "config.json").write_text(json.dumps(source.config.to_hf_dict(), indent=2))
    return epath.Path(dst)
