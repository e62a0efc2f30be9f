"""LoRA adapters as PEFT writes them: `adapter_model.safetensors` + `adapter_config.json`.

Written by us (no peft needed), read by `PeftModel.from_pretrained` on a transformers
`VideoLlavaForConditionalGeneration` of the same base, and by `load_adapter` here onto any base of
the same shape. Module paths are those of transformers >= 4.52 (`model.language_model.layers.N.
self_attn.q_proj`; tested with 5.x), where the decoder sits under `model.`; older 4.x nested it as
`language_model.model.layers.N`, where PEFT would find none of them. Reading accepts both spellings.

Keys: `base_model.model.<module>.lora_A.weight` (rank, in) and `.lora_B.weight` (out, rank);
a trained projector goes with them as PEFT's `modules_to_save` (`base_model.model.model.
multi_modal_projector.linear_1.weight`, ...). Our dense kernels are (in..., out...), so a layer's
`lora_A` is our `a` (in..., rank) flattened and transposed, `lora_B` our `b` (rank, out...) likewise.
"""

from __future__ import annotations

import dataclasses
import json
import re

import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from vllava_jax.checkpoint import hf
from vllava_jax.checkpoint.streamed import Streamed
from vllava_jax.checkpoint.write import staged
from vllava_jax.checkpoint.safetensors_io import SafetensorsReader, write_shard
from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import CheckpointError
from vllava_jax.jsonio import read_json
from vllava_jax.modeling import lora
from vllava_jax.modeling.video_llava import parameter_shapes

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModel.base_model (LoraModel) .model (VideoLlavaForConditionalGeneration)
PROJECTOR_MODULE = "multi_modal_projector"


@dataclasses.dataclass
class Adapter:
    """A PEFT adapter in our layout: per dense path its stacked (a, b); the projector's params if saved."""

    config: lora.LoraConfig
    weights: dict[str, tuple[np.ndarray, np.ndarray]]
    projector: dict[tuple[str, ...], np.ndarray]

    def delta(self, path: str, layer: int | None) -> np.ndarray:
        """scaling * a @ b of one dense (one layer of a stacked one), shaped like its kernel slice."""
        a, b = self.weights[path]
        if layer is not None:
            a, b = a[layer], b[layer]
        rank = a.shape[-1]
        flat = a.reshape(-1, rank).astype(np.float32) @ b.reshape(rank, -1).astype(np.float32)
        return (flat * np.float32(self.config.scaling)).reshape(*a.shape[:-1], *b.shape[1:])


def _dense_modules(cfg: VideoLlavaConfig) -> dict[str, tuple[hf.Entry, tuple[str, ...]]]:
    """Our dense path ("language_model/layers/attn/q") -> its kernel's name-map entry and transformers
    module name per layer ("model.language_model.layers.0.self_attn.q_proj"). The decoder's and the
    projector's only: the towers' canonical names drop the `vision_model.` that transformers keeps."""
    out = {}
    for entry in hf.name_map(cfg):
        if entry.ours[-1] == "kernel" and entry.ours[0] in ("language_model", "projector"):
            out["/".join(entry.ours[:-1])] = (entry, tuple("model." + n.removesuffix(".weight") for n in entry.torch))
    return out


def _projector_entries(cfg: VideoLlavaConfig) -> list[hf.Entry]:
    return [e for e in hf.name_map(cfg) if e.ours[0] == "projector"]


def _target_regex(modules: list[str]) -> str:
    """PEFT's `target_modules` as one full-match regex: each module name with its layer index as \\d+."""
    patterns = sorted({re.sub(r"\\\.\d+\\\.", r"\\.\\d+\\.", re.escape(m)) for m in modules})
    return "(" + "|".join(patterns) + ")"


def save_peft(module: nnx.Module, config: VideoLlavaConfig, directory: epath.PathLike, *,
              include_projector: bool = False, force: bool = False) -> epath.Path:
    """Write `module`'s adapters (and its projector, with `include_projector`) as a PEFT adapter dir."""
    found = list(lora.adapters(module))
    if not found:
        raise CheckpointError("the model has no LoRA adapters to save")
    settings = {dense.adapter.config for _, dense in found}
    assert len(settings) == 1, settings  # one LoraConfig per model (`lora.attach` is called once)
    settings = settings.pop()
    modules = _dense_modules(config)
    tensors, names = [], []
    for path, dense in found:
        if path not in modules:
            raise CheckpointError(f"{path}: only the decoder's and the projector's adapters are written in PEFT's "
                                  "format")
        a, b = (np.asarray(x[...], np.float32) for x in (dense.adapter.a, dense.adapter.b))
        rank = a.shape[-1]
        entry, module_names = modules[path]
        for layer, name in enumerate(module_names):
            la, lb = (a[layer], b[layer]) if entry.stacked else (a, b)
            a_torch, b_torch = la.reshape(-1, rank).T, lb.reshape(rank, -1).T
            tensors.append((f"{PREFIX}{name}.lora_A.weight", a_torch.shape, np.dtype(np.float32), lambda t=a_torch: t))
            tensors.append((f"{PREFIX}{name}.lora_B.weight", b_torch.shape, np.dtype(np.float32), lambda t=b_torch: t))
            names.append(name)
    if include_projector:
        state = dict(nnx.to_flat_state(nnx.state(module.projector, nnx.Param)))
        for entry in _projector_entries(config):
            value = np.asarray(state[entry.ours[1:]][...])
            torch_value = entry.transform.to_torch(value)
            tensors.append((f"{PREFIX}model.{entry.torch[0]}", torch_value.shape, value.dtype,
                            lambda t=torch_value: t))
    peft_config = {
        "peft_type": "LORA", "task_type": None, "r": int(settings.rank), "lora_alpha": float(settings.alpha),
        "lora_dropout": float(settings.dropout), "use_rslora": bool(settings.use_rslora),
        "target_modules": _target_regex(names), "modules_to_save": [PROJECTOR_MODULE] if include_projector else None,
        "bias": "none", "fan_in_fan_out": False, "use_dora": False, "init_lora_weights": True,
        "inference_mode": True, "base_model_name_or_path": None, "revision": None,
    }
    with staged(directory, force) as tmp:
        write_shard(tmp / WEIGHTS_FILE, tensors)
        (tmp / CONFIG_FILE).write_text(json.dumps(peft_config, indent=2))
    return epath.Path(directory)


def read_peft(directory: epath.PathLike, config: VideoLlavaConfig) -> Adapter:
    """A PEFT LoRA adapter dir in our layout, checked against the base model `config` describes."""
    directory = epath.Path(directory)
    config_path = directory / CONFIG_FILE
    raw = read_json(config_path, CheckpointError,
                    missing=f"no such file; an adapter dir holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    if raw.get("peft_type") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type is {raw.get('peft_type')!r}; only 'LORA' adapters are read")
    unsupported = {"use_dora": False, "fan_in_fan_out": False, "bias": "none", "lora_bias": False,
                   "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": None}
    for key, default in unsupported.items():
        if raw.get(key, default) not in (default, None):
            raise CheckpointError(f"{config_path}: {key}={raw[key]!r} is not supported (only {key}={default!r})")
    settings = lora.LoraConfig(rank=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                               dropout=float(raw.get("lora_dropout", 0.0)), use_rslora=bool(raw.get("use_rslora")))
    if not (directory / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: no such file")
    reader = SafetensorsReader(directory)
    by_module = {}
    for path, (entry, modules) in _dense_modules(config).items():
        for layer, module in enumerate(modules):
            by_module[hf.canonical_key(module)] = (path, layer)
    projector = {hf.canonical_key(e.torch[0]): e for e in _projector_entries(config)}
    shapes = parameter_shapes(config)
    parts: dict[str, dict[int, dict[str, np.ndarray]]] = {}
    projector_values, unexpected, misshaped = {}, [], []
    for key in reader.keys():
        name = hf.canonical_key(key.removeprefix(PREFIX))
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.default)?\.weight", name)
        if match and match.group(1) in by_module:
            path, layer = by_module[match.group(1)]
            parts.setdefault(path, {}).setdefault(layer, {})[match.group(2)] = reader.read(key)
        elif name in projector:
            entry = projector[name]
            value = reader.read(key)
            expected = hf.torch_shape(entry, shapes[entry.ours])
            if tuple(value.shape) != expected:
                misshaped.append(f"{key}: {tuple(value.shape)}, expected {expected}")
                continue
            projector_values[entry.ours[1:]] = entry.transform.to_ours(np.asarray(value), shapes[entry.ours])
        else:
            unexpected.append(key)
    weights = {}
    for path, layers in sorted(parts.items()):
        entry, modules = _dense_modules(config)[path]
        layer_kernel = hf.layer_shape(entry, shapes[entry.ours])
        # attention's o takes heads in; q/k/v and the MLP's take (embed or mlp) in
        in_ndim = 2 if entry.transform is hf.LINEAR_FROM_HEADS else 1
        in_shape, out_shape = layer_kernel[:in_ndim], layer_kernel[in_ndim:]
        a_list, b_list = [], []
        for layer, module in enumerate(modules):
            pair = layers.get(layer, {})
            if set(pair) != {"lora_A", "lora_B"}:
                misshaped.append(f"{PREFIX}{module}: missing {sorted({'lora_A', 'lora_B'} - set(pair))}")
                continue
            a, b = pair["lora_A"], pair["lora_B"]
            want_a, want_b = (settings.rank, int(np.prod(in_shape))), (int(np.prod(out_shape)), settings.rank)
            if a.shape != want_a or b.shape != want_b:
                misshaped.append(f"{PREFIX}{module}.lora_A/B: {a.shape}/{b.shape}, expected {want_a}/{want_b} "
                                 f"(r={settings.rank} on this base)")
                continue
            a_list.append(np.asarray(a, np.float32).T.reshape(*in_shape, settings.rank))
            b_list.append(np.asarray(b, np.float32).T.reshape(settings.rank, *out_shape))
        if len(a_list) == len(modules):
            weights[path] = (np.stack(a_list), np.stack(b_list)) if entry.stacked else (a_list[0], b_list[0])
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} tensor(s) this base has no module for:" + hf._listing(unexpected))
    if misshaped:
        problems.append(f"{len(misshaped)} incomplete or mis-shaped adapter(s):" + hf._listing(misshaped))
    if problems:
        raise CheckpointError(f"{directory} does not fit this base model:\n" + "\n".join(problems))
    if not weights:
        raise CheckpointError(f"{directory / WEIGHTS_FILE}: no lora_A/lora_B tensors")
    targets = tuple(f"^{re.escape(p)}$" for p in weights)
    return Adapter(dataclasses.replace(settings, targets=targets), weights, projector_values)


def load_adapter(model, directory: epath.PathLike):
    """`model` (a `VideoLlava`) with the adapter at `directory` attached, unmerged (and its projector, if saved)."""
    from vllava_jax.model import VideoLlava

    adapter = read_peft(directory, model.config)
    module = model.module
    lora.attach(module, adapter.config, model.policy)
    for path, dense in lora.adapters(module):
        a, b = adapter.weights[path]
        dense.adapter.a.set_value(jnp.asarray(a))
        dense.adapter.b.set_value(jnp.asarray(b))
    state = dict(nnx.to_flat_state(nnx.state(module.projector, nnx.Param)))
    for path, value in adapter.projector.items():
        state[path].set_value(jnp.asarray(value))  # as trained (float32), whatever the base's dtype
    return VideoLlava(model.config, model.policy, *nnx.split(module), model.mesh)


def merged_leaves(params: dict[tuple[str, ...], Streamed], directory: epath.PathLike,
                  config: VideoLlavaConfig) -> dict[tuple[str, ...], Streamed]:
    """`params` (a checkpoint's leaves, read on demand) with the adapter at `directory` merged into
    its kernels layer by layer (W + scaling * A B in float32, then the leaf's dtype) and its projector
    in place of the base's: what `convert --merge-adapter` writes."""
    adapter = read_peft(directory, config)
    out = dict(params)
    for path in adapter.weights:
        key = (*path.split("/"), "kernel")
        leaf = params[key]

        def read(index, leaf=leaf, path=path):
            base = np.asarray(leaf.read(index), np.float32)
            return (base + adapter.delta(path, index)).astype(leaf.dtype)

        out[key] = dataclasses.replace(leaf, read=read)
    for path, value in adapter.projector.items():
        key = ("projector", *path)
        leaf = params[key]
        out[key] = dataclasses.replace(leaf, read=lambda index, v=value, d=leaf.dtype: np.asarray(v, d))
    return out
