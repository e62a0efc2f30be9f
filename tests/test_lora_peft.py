"""Our LoRA adapters exported in PEFT's format: transformers + peft give our logits, unmerged and merged."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flax import nnx
from peft import PeftModel
from transformers import VideoLlavaForConditionalGeneration

import vllava_jax
from tests import oracle
from vllava_jax import convert
from vllava_jax.checkpoint import peft
from vllava_jax.checkpoint.write import save_hf
from vllava_jax.modeling import lora


def with_random_adapter(model, seed: int = 1, rank: int = 3, use_rslora: bool = False):
    """`model`'s module with adapters whose b is random too (fresh ones change nothing) and a moved projector."""
    rng = np.random.default_rng(seed)
    module = model.module
    lora.attach(module, lora.LoraConfig(rank=rank, alpha=5.0, use_rslora=use_rslora), model.policy)
    for _, dense in lora.adapters(module):
        for variable in (dense.adapter.a, dense.adapter.b):
            variable.set_value(0.3 * rng.standard_normal(variable.shape).astype(np.float32))
    for _, variable in nnx.iter_graph(module.projector):
        if isinstance(variable, nnx.Param):
            variable.set_value(variable[...] + 0.1 * rng.standard_normal(variable.shape).astype(np.float32))
    return module


def test_peft_export_matches_transformers_unmerged_and_merged(tmp_path, rng):
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config().to_dict())
    base = vllava_jax.VideoLlava.random(config, seed=3)
    save_hf(base, tmp_path / "base")
    module = with_random_adapter(base)
    peft.save_peft(module, config, tmp_path / "adapter", include_projector=True)
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["r"] == 3 and saved["lora_alpha"] == 5.0 and not saved["use_rslora"]

    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    videos = rng.standard_normal((1, 8, 3, 28, 28)).astype(np.float32)
    ids = oracle.make_ids(rng, [3, ("image", config.image_seq_length), 4, ("video", config.video_seq_length(8)), 5])
    ids = ids[None]
    reference = PeftModel.from_pretrained(VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "base"),
                                          tmp_path / "adapter").eval()
    ref = oracle.reference_logits(reference, ids, images=images, videos=videos)
    tolerance = 1e-4 * np.abs(ref).max()

    ours = vllava_jax.VideoLlava(config, base.policy, *nnx.split(module))
    unmerged = np.asarray(ours(ids, pixel_values_images=images, pixel_values_videos=videos).logits)
    assert np.abs(unmerged - ref).max() < tolerance
    # the adapter matters: the base alone is far off
    plain = np.asarray(base(ids, pixel_values_images=images, pixel_values_videos=videos).logits)
    assert np.abs(plain - ref).max() > 100 * tolerance

    loaded = peft.load_adapter(vllava_jax.load_pretrained(tmp_path / "base"), tmp_path / "adapter")
    reloaded = np.asarray(loaded(ids, pixel_values_images=images, pixel_values_videos=videos).logits)
    assert np.abs(reloaded - unmerged).max() < 1e-6 * np.abs(ref).max()

    merged_module = loaded.module
    assert lora.merge(merged_module) == 7
    merged = vllava_jax.VideoLlava(config, loaded.policy, *nnx.split(merged_module))
    assert not list(lora.adapters(merged.module))
    merged_logits = np.asarray(merged(ids, pixel_values_images=images, pixel_values_videos=videos).logits)
    assert np.abs(merged_logits - ref).max() < tolerance

    # rsLoRA's scaling (alpha / sqrt(r)) too
    rs_module = with_random_adapter(base, seed=2, use_rslora=True)
    peft.save_peft(rs_module, config, tmp_path / "rslora", include_projector=True)
    rs_reference = PeftModel.from_pretrained(VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "base"),
                                             tmp_path / "rslora").eval()
    rs_ref = oracle.reference_logits(rs_reference, ids, images=images, videos=videos)
    rs_ours = vllava_jax.VideoLlava(config, base.policy, *nnx.split(rs_module))
    rs_logits = np.asarray(rs_ours(ids, pixel_values_images=images, pixel_values_videos=videos).logits)
    assert np.abs(rs_logits - rs_ref).max() < 1e-4 * np.abs(rs_ref).max()

    # convert --merge-adapter streams the same merge into a checkpoint transformers reads alone
    assert convert.main(["--src", str(tmp_path / "base"), "--dst", str(tmp_path / "merged"), "--to", "hf",
                         "--merge-adapter", str(tmp_path / "adapter")]) == 0
    merged_ref = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    converted = oracle.reference_logits(merged_ref, ids, images=images, videos=videos)
    assert np.abs(converted - ref).max() < tolerance


def test_adapter_for_another_base_is_refused_naming_the_tensor(tmp_path):
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config().to_dict())
    module = with_random_adapter(vllava_jax.VideoLlava.random(config, seed=0))
    peft.save_peft(module, config, tmp_path / "adapter")
    wider = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config(text=dict(intermediate_size=80)).to_dict())
    with pytest.raises(vllava_jax.CheckpointError, match=r"mlp\.gate_proj\.lora_A/B"):
        peft.read_peft(tmp_path / "adapter", wider)
    deeper = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config(text=dict(num_hidden_layers=2)).to_dict())
    with pytest.raises(vllava_jax.CheckpointError, match=r"layers\.2\.self_attn"):
        peft.read_peft(tmp_path / "adapter", deeper)
    with pytest.raises(vllava_jax.CheckpointError, match="adapter_config.json: no such file"):
        peft.read_peft(tmp_path, config)
