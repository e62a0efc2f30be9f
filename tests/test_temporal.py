"""LanguageBind's temporal attention (the original Video-LLaVA video tower) against a PyTorch reference.

transformers has no such block, so the reference is written here from the original definition
(PKU-YuanGroup/Video-LLaVA, languagebind/video/modeling_video.py): per layer, add the temporal
embedding to tokens seen as (batch*patches, frames, dim), take the residual, attend across frames
after `temporal_layer_norm1`, then the usual CLIP spatial attention and MLP.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import vllava_jax
from tests import oracle

FRAMES = 8


class RefAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        split = lambda t: t.view(b, n, self.heads, d // self.heads).transpose(1, 2)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        w = torch.softmax(q @ k.transpose(-1, -2) * (d // self.heads) ** -0.5, dim=-1)
        return self.out_proj((w @ v).transpose(1, 2).reshape(b, n, d))


class RefMLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))


class RefLayer(nn.Module):
    def __init__(self, dim, hidden, heads, frames):
        super().__init__()
        self.t = frames
        self.temporal_embedding = nn.Parameter(torch.zeros(1, frames, dim))
        self.temporal_attn = RefAttention(dim, heads)
        self.temporal_layer_norm1 = nn.LayerNorm(dim)
        self.self_attn = RefAttention(dim, heads)
        self.layer_norm1 = nn.LayerNorm(dim)
        self.mlp = RefMLP(dim, hidden)
        self.layer_norm2 = nn.LayerNorm(dim)

    def forward(self, x):
        bt, n, d = x.shape
        t = self.t
        x = x.view(bt // t, t, n, d).permute(0, 2, 1, 3).reshape(-1, t, d)  # (b t) n d -> (b n) t d
        x = x + self.temporal_embedding[:, :t]
        x = x + self.temporal_attn(self.temporal_layer_norm1(x))
        x = x.view(bt // t, n, t, d).permute(0, 2, 1, 3).reshape(bt, n, d)  # (b n) t d -> (b t) n d
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class RefEmbeddings(nn.Module):
    def __init__(self, dim, patch, positions):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(dim))
        self.patch_embedding = nn.Conv2d(3, dim, patch, patch, bias=False)
        self.position_embedding = nn.Embedding(positions, dim)


class RefEncoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class RefTemporalTower(nn.Module):
    def __init__(self, dim, hidden, heads, layers, image, patch, frames):
        super().__init__()
        self.embeddings = RefEmbeddings(dim, patch, (image // patch) ** 2 + 1)
        self.pre_layrnorm = nn.LayerNorm(dim)
        self.encoder = RefEncoder([RefLayer(dim, hidden, heads, frames) for _ in range(layers)])
        self.post_layernorm = nn.LayerNorm(dim)

    def forward(self, pixels):
        """(B, C, T, H, W), as the original takes videos -> hidden states, each (B*T, tokens, dim)."""
        b, c, t, h, w = pixels.shape
        x = pixels.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = self.embeddings.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = self.embeddings.class_embedding.expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.embeddings.position_embedding.weight
        x = self.pre_layrnorm(x)
        states = [x]
        for layer in self.encoder.layers:
            x = layer(x)
            states.append(x)
        return states


@pytest.fixture(scope="module")
def temporal_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("temporal")
    hf_model = oracle.save_tiny_model(path)
    v = hf_model.config.vision_config
    torch.manual_seed(1)
    tower = RefTemporalTower(v.hidden_size, v.intermediate_size, v.num_attention_heads, v.num_hidden_layers,
                             v.image_size, v.patch_size, FRAMES).eval()
    oracle.randomize_(tower, seed=1)
    state = {k: t.contiguous() for k, t in hf_model.state_dict().items() if "video_tower" not in k}
    state.update({f"model.video_tower.{k}": t.contiguous() for k, t in tower.state_dict().items()})
    (path / "model.safetensors").unlink()
    save_file(state, str(path / "model.safetensors"))
    config = json.loads((path / "config.json").read_text())
    config["video_vision_config"] = {**config["vision_config"], "add_time_attn": True, "num_frames": FRAMES}
    (path / "config.json").write_text(json.dumps(config))
    return path, hf_model, tower


def test_temporal_tower_matches_reference_layer_by_layer(temporal_checkpoint, rng):
    path, hf_model, tower = temporal_checkpoint
    model = vllava_jax.load_pretrained(path)
    size = hf_model.config.vision_config.image_size
    videos = rng.standard_normal((2, FRAMES, 3, size, size)).astype(np.float32)  # (N, T, C, H, W)
    with torch.no_grad():
        ref = tower(torch.as_tensor(videos).permute(0, 2, 1, 3, 4))
    frames = videos.reshape(-1, 3, size, size)
    with jax.default_matmul_precision("highest"):
        ours = model.module.video_tower.hidden_states(frames, tuple(range(len(ref))), num_frames=FRAMES)
    for layer, (o, r) in enumerate(zip(ours, ref)):
        err = np.abs(np.asarray(o) - r.numpy()).max()
        assert err < 1e-4 * np.abs(r.numpy()).max(), f"hidden state {layer}: max abs diff {err}"
    # the temporal block must matter, or this test proves nothing
    plain = vllava_jax.load_pretrained(path).module.image_tower.hidden_states(frames, (-1,))[0]
    assert np.abs(np.asarray(plain) - ref[-1].numpy()).max() > 1e-2


def test_temporal_video_logits_match_reference_features(temporal_checkpoint, rng):
    path, hf_model, tower = temporal_checkpoint
    model = vllava_jax.load_pretrained(path)
    size = hf_model.config.vision_config.image_size
    videos = rng.standard_normal((1, FRAMES, 3, size, size)).astype(np.float32)
    ids = oracle.make_ids(rng, [3, ("video", oracle.tokens_per_video(hf_model, FRAMES)), 4])[None]
    with torch.no_grad():
        features = hf_model.model.multi_modal_projector(tower(torch.as_tensor(videos).permute(0, 2, 1, 3, 4))[-2])
        slots = torch.as_tensor(ids == oracle.VIDEO_TOKEN)
        embeds = hf_model.get_input_embeddings()(torch.as_tensor(ids))
        embeds[slots] = features.reshape(-1, features.shape[-1])  # what transformers' masked_scatter does
        ref = hf_model(inputs_embeds=embeds).logits.numpy()
    ours = np.asarray(model(ids, pixel_values_videos=videos).logits)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_temporal_tower_needs_its_frame_count(temporal_checkpoint, rng):
    path, hf_model, _ = temporal_checkpoint
    model = vllava_jax.load_pretrained(path)
    size = hf_model.config.vision_config.image_size
    videos = rng.standard_normal((1, 4, 3, size, size)).astype(np.float32)
    ids = oracle.make_ids(rng, [("video", oracle.tokens_per_video(hf_model, 4))])[None]
    with pytest.raises(vllava_jax.InputError, match="exactly 8"):
        model(ids, pixel_values_videos=videos)
