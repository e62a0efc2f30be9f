"""transformers-format Video-LLaVA checkpoints: one declarative name map, read in both key layouts.

Each entry pairs one of our parameters with its PyTorch tensor name(s) and a reversible
transform (transpose a Linear, split heads, reorder a conv kernel). Stacked layers map to the
list of per-layer names. transformers 4.x saved `image_tower.vision_model.*`,
`language_model.model.*`, `language_model.lm_head.weight`; current transformers names them
`model.image_tower.*`, `model.language_model.*`, `lm_head.weight` in memory. Keys are normalized
to one canonical spelling before lookup, so either reads.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterator

import jax
import numpy as np

from vllava_jax.checkpoint.streamed import is_stacked
from vllava_jax.config import TextConfig, VideoLlavaConfig, VisionConfig
from vllava_jax.errors import CheckpointError


@dataclasses.dataclass(frozen=True)
class Transform:
    """PyTorch layout -> ours (given our shape) and back."""

    to_ours: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]
    to_torch: Callable[[np.ndarray], np.ndarray]


SAME = Transform(lambda w, shape: w.reshape(shape), lambda w: w)
# nn.Linear weight (out, in) -> kernel (in..., out...); `in_ndim` leading kernel dims are the input.
LINEAR = Transform(lambda w, shape: w.T.reshape(shape), lambda w: w.reshape(w.shape[0], -1).T)
LINEAR_FROM_HEADS = Transform(lambda w, shape: w.T.reshape(shape), lambda w: w.reshape(-1, w.shape[-1]).T)
FLAT = Transform(lambda w, shape: w.reshape(shape), lambda w: w.reshape(-1))
# Conv2d weight (out, in, kh, kw) -> (kh, kw, in, out)
CONV = Transform(lambda w, shape: w.transpose(2, 3, 1, 0), lambda w: w.transpose(3, 2, 0, 1))


@dataclasses.dataclass(frozen=True)
class Entry:
    ours: tuple[str, ...]
    torch: tuple[str, ...]  # one name, or one per stacked layer
    transform: Transform

    @property
    def stacked(self) -> bool:
        return is_stacked(self.ours)


def _attention(ours: tuple[str, ...], torch: str, out_name: str, bias: bool) -> Iterator[tuple]:
    for p in "qkv":
        yield ours + (p, "kernel"), f"{torch}.{p}_proj.weight", LINEAR
        if bias:
            yield ours + (p, "bias"), f"{torch}.{p}_proj.bias", FLAT
    yield ours + ("o", "kernel"), f"{torch}.{out_name}.weight", LINEAR_FROM_HEADS
    if bias:
        yield ours + ("o", "bias"), f"{torch}.{out_name}.bias", SAME


def _norm(ours: tuple[str, ...], torch: str, bias: bool = True) -> Iterator[tuple]:
    yield ours + ("scale",), f"{torch}.weight", SAME
    if bias:
        yield ours + ("bias",), f"{torch}.bias", SAME


def _dense(ours: tuple[str, ...], torch: str, bias: bool) -> Iterator[tuple]:
    yield ours + ("kernel",), f"{torch}.weight", LINEAR
    if bias:
        yield ours + ("bias",), f"{torch}.bias", SAME


def _vision_layer(cfg: VisionConfig) -> Iterator[tuple]:
    yield from _attention(("attn",), "self_attn", "out_proj", bias=True)
    yield from _norm(("layer_norm1",), "layer_norm1")
    yield from _norm(("layer_norm2",), "layer_norm2")
    yield from _dense(("mlp", "fc1"), "mlp.fc1", bias=True)
    yield from _dense(("mlp", "fc2"), "mlp.fc2", bias=True)
    if cfg.add_time_attn:
        yield ("temporal", "embedding"), "temporal_embedding", SAME
        yield from _norm(("temporal", "layer_norm"), "temporal_layer_norm1")
        yield from _attention(("temporal", "attn"), "temporal_attn", "out_proj", bias=True)


def _tower(ours: str, torch: str, cfg: VisionConfig) -> Iterator[Entry]:
    top = [
        (("patch_kernel",), "embeddings.patch_embedding.weight", CONV),
        (("class_embedding",), "embeddings.class_embedding", SAME),
        (("position_embedding",), "embeddings.position_embedding.weight", SAME),
        *_norm(("pre_layernorm",), "pre_layrnorm"),
        *_norm(("post_layernorm",), "post_layernorm"),
    ]
    for o, t, tr in top:
        yield Entry((ours, *o), (f"{torch}.{t}",), tr)
    for o, t, tr in _vision_layer(cfg):
        names = tuple(f"{torch}.encoder.layers.{i}.{t}" for i in range(cfg.num_hidden_layers))
        yield Entry((ours, "layers", *o), names, tr)


def _llama_layer(cfg: TextConfig) -> Iterator[tuple]:
    yield from _attention(("attn",), "self_attn", "o_proj", bias=cfg.attention_bias)
    for p in ("gate", "up", "down"):
        yield from _dense(("mlp", p), f"mlp.{p}_proj", bias=cfg.mlp_bias)
    yield from _norm(("input_layernorm",), "input_layernorm", bias=False)
    yield from _norm(("post_attention_layernorm",), "post_attention_layernorm", bias=False)


def name_map(cfg: VideoLlavaConfig) -> list[Entry]:
    """Every parameter of `VideoLlavaModel(cfg)` with its canonical PyTorch name(s)."""
    entries = [*_tower("image_tower", "image_tower", cfg.vision_config),
               *_tower("video_tower", "video_tower", cfg.video_tower_config)]
    for i in (1, 2):
        for o, t, tr in _dense(("projector", f"linear_{i}"), f"multi_modal_projector.linear_{i}",
                               cfg.multimodal_projector_bias):
            entries.append(Entry(o, (t,), tr))
    text = cfg.text_config
    entries.append(Entry(("language_model", "embed_tokens"), ("language_model.embed_tokens.weight",), SAME))
    entries.append(Entry(("language_model", "norm", "scale"), ("language_model.norm.weight",), SAME))
    if not text.tie_word_embeddings:
        entries.append(Entry(("language_model", "lm_head"), ("lm_head.weight",), LINEAR))
    for o, t, tr in _llama_layer(text):
        names = tuple(f"language_model.layers.{i}.{t}" for i in range(text.num_hidden_layers))
        entries.append(Entry(("language_model", "layers", *o), names, tr))
    return entries


_CANONICAL = [
    (re.compile(r"^model\."), ""),
    (re.compile(r"^language_model\.model\."), "language_model."),
    (re.compile(r"^language_model\.lm_head\."), "lm_head."),
    (re.compile(r"^(image|video)_tower\.vision_model\."), r"\1_tower."),
]
# Buffers some versions saved beside the weights; they are recomputed, never learned.
_BUFFERS = re.compile(r"(position_ids|rotary_emb\.inv_freq)$")


def canonical_key(key: str) -> str:
    for pattern, repl in _CANONICAL:
        key = pattern.sub(repl, key)
    return key


def _fits(found: tuple[int, ...], expected: tuple[int, ...]) -> bool:
    """Equal up to size-1 dims (the original saves a temporal embedding as (1, frames, dim))."""
    return tuple(d for d in found if d != 1) == tuple(d for d in expected if d != 1)


def _listing(lines: list[str], limit: int = 20) -> str:
    shown = "\n  ".join(lines[:limit])
    more = f"\n  ... and {len(lines) - limit} more" if len(lines) > limit else ""
    return f"\n  {shown}{more}"


def plan(
    reader, cfg: VideoLlavaConfig, shapes: dict[tuple[str, ...], tuple[int, ...]], canonical=canonical_key
) -> list[tuple[Entry, list[str]]]:
    """Every entry of the name map with the reader's key for each of its tensors.

    Checks the whole checkpoint first, so a bad one fails before any conversion work, with every
    missing, unexpected and mis-shaped tensor listed by its name in the files. `canonical` maps
    a file's key to the spelling in the name map (another layout is a renaming on top of it).
    """
    available = {canonical(k): k for k in reader.keys() if not _BUFFERS.search(k)}
    entries = name_map(cfg)
    assert {e.ours for e in entries} == set(shapes), set(shapes) ^ {e.ours for e in entries}
    missing, misshaped, used = [], [], set()
    for entry in entries:
        expected = torch_shape(entry, shapes[entry.ours])
        for name in entry.torch:
            if name not in available:
                missing.append(name)
                continue
            used.add(name)
            found = reader.shape(available[name])
            if not _fits(found, expected):
                misshaped.append(f"{available[name]}: {found}, expected {expected}")
    unexpected = sorted(available[k] for k in set(available) - used)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s):" + _listing(missing))
    if misshaped:
        problems.append(f"{len(misshaped)} mis-shaped tensor(s):" + _listing(misshaped))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) the config has no place for:" + _listing(unexpected))
    if problems:
        raise CheckpointError(f"{reader.directory} does not fit its config.json:\n" + "\n".join(problems))
    return [(entry, [available[n] for n in entry.torch]) for entry in entries]


def layer_shape(entry: Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Our shape of one of the entry's tensors: one layer of a stacked parameter."""
    return tuple(shape[1:]) if entry.stacked else tuple(shape)


def torch_shape(entry: Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The PyTorch shape of one of the entry's tensors, given our (stacked) shape."""
    return jax.eval_shape(entry.transform.to_torch, jax.ShapeDtypeStruct(layer_shape(entry, shape), np.float32)).shape


def on_disk_key(canonical: str) -> str:
    """The spelling transformers' `save_pretrained` writes for a canonical key."""
    if canonical.startswith("language_model."):
        return "language_model.model." + canonical[len("language_model."):]
    if canonical == "lm_head.weight":
        return "language_model.lm_head.weight"
    return canonical
