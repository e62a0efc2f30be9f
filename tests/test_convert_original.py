"""The original Video-LLaVA layout (LLaVA config, `model.*_tower.*_tower.*`, `.bin` shards) converts to ours."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vllava_jax
from tests import oracle
from tests.cli_run import assert_user_error, in_process
from tests.test_temporal import FRAMES, RefTemporalTower
from vllava_jax import convert
from vllava_jax.checkpoint.detect import detect

ORIGINAL_IMAGE, ORIGINAL_VIDEO = oracle.VOCAB, oracle.VOCAB + 1  # our placeholder ids for it: vocab, vocab + 1


def original_key(key: str) -> str:
    """A transformers 5.24 on-disk key renamed the way the original project names it."""
    for pattern, repl in [(r"^(image|video)_tower\.", r"model.\1_tower.\1_tower."),
                          (r"^multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
                          (r"^multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
                          (r"^language_model\.model\.", "model."), (r"^language_model\.lm_head\.", "lm_head.")]:
        key = re.sub(pattern, repl, key)
    return key


def write_original(path, hf_dir, model, video_tower=None, towers_local=True) -> None:
    """An original-layout dir: LLaVA config.json, LanguageBind tower dirs, two pytorch_model-*.bin shards."""
    path.mkdir(parents=True)
    cfg = model.config
    state = {original_key(k): t for k, t in load_file(hf_dir / "model.safetensors").items()}
    if video_tower is not None:
        state = {k: t for k, t in state.items() if "video_tower" not in k}
        state.update({f"model.video_tower.video_tower.{k}": t.contiguous() for k, t in video_tower.state_dict().items()})
    state["model.image_tower.image_tower.embeddings.position_ids"] = torch.arange(5)[None]  # a buffer: skipped
    names = sorted(state)
    torch.save({k: state[k] for k in names[::2]}, path / "pytorch_model-00001-of-00002.bin")
    torch.save({k: state[k] for k in names[1::2]}, path / "pytorch_model-00002-of-00002.bin")
    vision = {k: v for k, v in cfg.vision_config.to_dict().items() if k != "model_type"}
    for name in ("LanguageBind_Image", "LanguageBind_Video_merge"):
        if towers_local:
            (path / name).mkdir()
            (path / name / "config.json").write_text(json.dumps({"vision_config": {**vision, "add_time_attn": "Video" in name}}))
    text = cfg.text_config.to_dict()
    text.pop("rope_parameters")
    (path / "config.json").write_text(json.dumps({
        **text, "model_type": "llava", "architectures": ["LlavaLlamaForCausalLM"], "rope_theta": 10000.0,
        "mm_image_tower": "LanguageBind_Image" if towers_local else "LanguageBind/LanguageBind_Image",
        "mm_video_tower": "LanguageBind_Video_merge", "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch", "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": vision["hidden_size"],
        "mm_use_im_start_end": False, "tune_mm_mlp_adapter": False, "use_mm_proj": True}))
    (path / "tokenizer_config.json").write_text("{}")


def original_ids(ids):
    return np.where(ids == oracle.IMAGE_TOKEN, ORIGINAL_IMAGE, np.where(ids == oracle.VIDEO_TOKEN, ORIGINAL_VIDEO, ids))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("orig")
    model = oracle.save_tiny_model(path / "hf")
    write_original(path / "original", path / "hf", model)
    return path / "original", model


def test_original_to_ours_matches_transformers(tiny, tmp_path, rng):
    path, model = tiny
    assert detect(path) == "original"
    assert any(k.startswith("model.video_tower.video_tower.encoder.") for k in torch.load(
        path / "pytorch_model-00001-of-00002.bin", weights_only=True))
    assert convert.main(["--src", str(path), "--dst", str(tmp_path / "ours")]) == 0
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert (config["image_token_index"], config["video_token_index"]) == (ORIGINAL_IMAGE, ORIGINAL_VIDEO)
    assert (tmp_path / "ours" / "tokenizer_config.json").exists()
    images = rng.standard_normal((1, 3, 28, 28)).astype(np.float32)
    videos = rng.standard_normal((1, 2, 3, 28, 28)).astype(np.float32)
    ids = oracle.make_ids(rng, [3, ("image", 4), 2, ("video", oracle.tokens_per_video(model, 2)), 4])[None]
    ref = oracle.reference_logits(model, ids, images=images, videos=videos)
    for loaded in (vllava_jax.load_pretrained(tmp_path / "ours"), vllava_jax.load_pretrained(path)):
        ours = np.asarray(loaded(original_ids(ids), pixel_values_images=images, pixel_values_videos=videos).logits)
        assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_unresolved_tower_names_fall_back_to_languagebind_with_a_warning(tmp_path):
    model = oracle.save_tiny_model(tmp_path / "hf")
    write_original(tmp_path / "original", tmp_path / "hf", model, towers_local=False)
    with pytest.warns(UserWarning, match="LanguageBind's published ViT-L/14"):
        with pytest.raises(vllava_jax.CheckpointError, match=r"model\.image_tower\.image_tower\.embeddings\.patch_embedding\.weight: \(32, 3, 14, 14\), expected \(1024, 3, 14, 14\)"):
            vllava_jax.load_pretrained(tmp_path / "original")


def test_extra_and_missing_original_keys_are_listed_by_their_names(tiny, tmp_path):
    path, _ = tiny
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in path.iterdir():
        if item.is_dir():
            continue
        (bad / item.name).write_bytes(item.read_bytes())
    shard = torch.load(bad / "pytorch_model-00001-of-00002.bin", weights_only=True)
    dropped = sorted(shard)[3]
    del shard[dropped]
    shard["model.mm_projector.4.weight"] = torch.zeros(2)
    torch.save(shard, bad / "pytorch_model-00001-of-00002.bin")
    for name in ("LanguageBind_Image", "LanguageBind_Video_merge"):
        os.symlink(path / name, bad / name)
    with pytest.raises(vllava_jax.CheckpointError) as info:
        vllava_jax.load_pretrained(bad)
    assert "1 missing tensor(s)" in str(info.value) and "model.mm_projector.4.weight" in str(info.value)


def write_temporal_original(path, **cfg):
    """An original-layout dir at `path / "original"` whose video tower has LanguageBind temporal attention."""
    model = oracle.save_tiny_model(path / "hf", **cfg)
    v = model.config.vision_config
    torch.manual_seed(1)
    tower = RefTemporalTower(v.hidden_size, v.intermediate_size, v.num_attention_heads, v.num_hidden_layers,
                             v.image_size, v.patch_size, FRAMES).eval()
    oracle.randomize_(tower, seed=1)
    write_original(path / "original", path / "hf", model, video_tower=tower)
    return model, tower


@pytest.fixture(scope="module")
def temporal(tmp_path_factory):
    path = tmp_path_factory.mktemp("orig_temporal")
    model, tower = write_temporal_original(path)
    return path / "original", model, tower


def test_temporal_weights_are_kept_and_used(temporal, tmp_path, rng):
    path, model, tower = temporal
    assert convert.main(["--src", str(path), "--dst", str(tmp_path / "ours")]) == 0
    ours = vllava_jax.load_pretrained(tmp_path / "ours")
    video = ours.config.video_vision_config
    assert video.add_time_attn and video.num_frames == FRAMES
    saved = ours.state["video_tower"]["layers"]["temporal"]["embedding"][...]
    expected = np.stack([layer.temporal_embedding.detach().numpy()[0] for layer in tower.encoder.layers])
    np.testing.assert_array_equal(np.asarray(saved), expected)
    # logits: the reference tower's features scattered into transformers' decoder (as tests/test_temporal.py)
    size = model.config.vision_config.image_size
    videos = rng.standard_normal((1, FRAMES, 3, size, size)).astype(np.float32)
    ids = oracle.make_ids(rng, [3, ("video", oracle.tokens_per_video(model, FRAMES)), 4])[None]
    with torch.no_grad():
        features = model.model.multi_modal_projector(tower(torch.as_tensor(videos).permute(0, 2, 1, 3, 4))[-2])
        embeds = model.get_input_embeddings()(torch.as_tensor(ids))
        embeds[torch.as_tensor(ids == oracle.VIDEO_TOKEN)] = features.reshape(-1, features.shape[-1])
        ref = model(inputs_embeds=embeds).logits.numpy()
    logits = np.asarray(ours(original_ids(ids), pixel_values_videos=videos).logits)
    assert np.abs(logits - ref).max() < 1e-4 * np.abs(ref).max()


def test_exporting_temporal_to_transformers_needs_drop_temporal(temporal, tmp_path, capsys):
    path, _, _ = temporal
    assert convert.main(["--src", str(path), "--dst", str(tmp_path / "ours")]) == 0
    result = in_process(convert.main, ["--src", tmp_path / "ours", "--dst", tmp_path / "hf", "--to", "hf"], capsys)
    assert_user_error(result, 1, "video outputs would change")
    assert not (tmp_path / "hf").exists()
    assert convert.main(["--src", str(tmp_path / "ours"), "--dst", str(tmp_path / "hf"), "--to", "hf",
                         "--drop-temporal"]) == 0
    from transformers import VideoLlavaForConditionalGeneration

    _, info = VideoLlavaForConditionalGeneration.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
