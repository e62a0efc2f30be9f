"""The parity oracle: tiny random `VideoLlavaForConditionalGeneration` models and their inputs."""

from __future__ import annotations

import inspect

import numpy as np
import torch
from transformers import VideoLlavaConfig as HFVideoLlavaConfig
from transformers import VideoLlavaForConditionalGeneration

VOCAB = 120
IMAGE_TOKEN = VOCAB - 2
VIDEO_TOKEN = VOCAB - 1


def hf_config(vision=None, text=None, **top) -> HFVideoLlavaConfig:
    vision_config = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=3, num_attention_heads=4,
                         image_size=28, patch_size=14, projection_dim=16)
    text_config = dict(hidden_size=48, intermediate_size=72, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=512)
    vision_config.update(vision or {})
    text_config.update(text or {})
    return HFVideoLlavaConfig(vision_config=vision_config, text_config=text_config, image_token_index=IMAGE_TOKEN,
                              video_token_index=VIDEO_TOKEN, **top)


TINY_CONFIGS = {
    "gqa_default": dict(),
    "mha_full_layer_last": dict(vision=dict(image_size=32, patch_size=8), text=dict(num_key_value_heads=4),
                                vision_feature_layer=-1, vision_feature_select_strategy="full"),
    "tied_biases_linear_rope": dict(text=dict(attention_bias=True, mlp_bias=True,
                                              rope_parameters=dict(rope_type="linear", rope_theta=500.0, factor=2.0)),
                                    tie_word_embeddings=True, vision_feature_layer=1),
    "dynamic_rope": dict(text=dict(max_position_embeddings=16,
                                   rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0, factor=2.0))),
    "llama3_rope": dict(text=dict(max_position_embeddings=64, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=8))),
}


def randomize_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random values everywhere (norm scales and biases too), so no parameter goes unchecked."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layer_norm" in name and name.endswith("weight") or "layrnorm.weight" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))


def save_tiny_model(path, seed: int = 0, **cfg) -> VideoLlavaForConditionalGeneration:
    torch.manual_seed(seed)
    model = VideoLlavaForConditionalGeneration(hf_config(**cfg)).eval()
    randomize_(model, seed)
    model.save_pretrained(path)
    return model


def tokens_per_image(model) -> int:
    c = model.config
    n = (c.vision_config.image_size // c.vision_config.patch_size) ** 2
    return n + (1 if c.vision_feature_select_strategy == "full" else 0)


def tokens_per_video(model, frames: int) -> int:
    v = model.config.vision_config
    return frames * ((v.image_size // v.patch_size) ** 2 + 1)


def make_ids(rng, pieces) -> np.ndarray:
    """A row of ids from pieces: an int n = n random text ids, or ("image"|"video", count)."""
    row = []
    for piece in pieces:
        if isinstance(piece, int):
            row.extend(rng.integers(3, VOCAB - 3, piece).tolist())
        else:
            kind, count = piece
            row.extend([IMAGE_TOKEN if kind == "image" else VIDEO_TOKEN] * count)
    return np.asarray(row, np.int64)


def reference_inputs(model, input_ids, attention_mask=None, images=None, videos=None, position_ids=None) -> dict:
    """The keyword arguments of transformers' forward (and generate) for these inputs, as tensors."""
    kwargs = dict(input_ids=torch.as_tensor(input_ids))
    if attention_mask is not None:
        kwargs["attention_mask"] = torch.as_tensor(attention_mask)
    if images is not None:  # transformers 5.23 renamed pixel_values_images to pixel_values
        name = "pixel_values" if "pixel_values" in inspect.signature(model.forward).parameters else "pixel_values_images"
        kwargs[name] = torch.as_tensor(images)
    if videos is not None:
        kwargs["pixel_values_videos"] = torch.as_tensor(videos)
    if position_ids is not None:
        kwargs["position_ids"] = torch.as_tensor(position_ids)
    return kwargs


def reference_logits(model, input_ids, attention_mask=None, images=None, videos=None, position_ids=None):
    kwargs = reference_inputs(model, input_ids, attention_mask, images, videos, position_ids)
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()
