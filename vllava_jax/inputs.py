"""Host-side checks of model inputs, where a clear error can still name the shape at fault."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import InputError


def _check_pixels(name: str, pixels, ndim: int, channels: int, size: int, layout: str) -> None:
    shape = tuple(np.shape(pixels))
    if len(shape) != ndim:
        raise InputError(f"{name} has shape {shape}; expected {ndim} dims {layout}")
    c, h, w = shape[-3:]
    if c != channels and w == channels:
        raise InputError(f"{name} has shape {shape}, which looks channels-last; expected {layout} "
                         "as VideoLlavaProcessor returns (channels before height and width)")
    if (c, h, w) != (channels, size, size):
        raise InputError(f"{name} has shape {shape}; this model takes {layout} with C={channels}, "
                         f"H=W={size}")


def _check_features(name: str, features, cfg: VideoLlavaConfig) -> None:
    if np.shape(features)[1] != cfg.text_config.hidden_size:
        raise InputError(f"{name} holds projected features of shape {np.shape(features)}; expected (tokens, "
                         f"{cfg.text_config.hidden_size}) for this decoder")


def check_inputs(cfg: VideoLlavaConfig, input_ids, attention_mask, images, videos) -> None:
    """Raise InputError when shapes or placeholder counts do not fit together."""
    if input_ids.ndim != 2:
        raise InputError(f"input_ids has shape {input_ids.shape}; expected (batch, length)")
    if attention_mask.shape != input_ids.shape:
        raise InputError(f"attention_mask has shape {attention_mask.shape} but input_ids has {input_ids.shape}")
    vocab = cfg.text_config.vocab_size
    special = (cfg.image_token_index, cfg.video_token_index)
    bad = (input_ids < 0) | ((input_ids >= vocab) & ~np.isin(input_ids, special))
    if bad.any():
        raise InputError(f"input_ids holds ids outside the vocabulary [0, {vocab}): {sorted(set(input_ids[bad].tolist()))[:10]}")

    n_image_slots = int((input_ids == cfg.image_token_index).sum())
    n_images, per_image = 0, cfg.image_seq_length
    if np.ndim(images) == 2:  # projected features (vllava_jax.features): one row per placeholder
        _check_features("pixel_values_images", images, cfg)
        n_images, per_image = np.shape(images)[0], 1
    elif images is not None:
        vc = cfg.vision_config
        _check_pixels("pixel_values_images", images, 4, vc.num_channels, vc.image_size, "(N, C, H, W)")
        n_images = np.shape(images)[0]
    if n_image_slots != n_images * per_image:
        raise InputError(
            f"input_ids hold {n_image_slots} image placeholder tokens (id {cfg.image_token_index}) but "
            f"pixel_values_images gives {n_images} image(s) x {per_image} tokens = {n_images * per_image}")

    n_video_slots = int((input_ids == cfg.video_token_index).sum())
    n_videos, per_video = 0, 0
    if np.ndim(videos) == 2:
        _check_features("pixel_values_videos", videos, cfg)
        n_videos, per_video = np.shape(videos)[0], 1
    elif videos is not None:
        vc = cfg.video_tower_config
        _check_pixels("pixel_values_videos", videos, 5, vc.num_channels, vc.image_size, "(N, T, C, H, W)")
        n_videos, frames = np.shape(videos)[:2]
        if vc.add_time_attn and frames != vc.num_frames:
            raise InputError(f"pixel_values_videos has {frames} frames; this video tower's temporal attention "
                             f"was built for exactly {vc.num_frames}")
        per_video = cfg.video_seq_length(frames)
    if n_video_slots != n_videos * per_video:
        raise InputError(
            f"input_ids hold {n_video_slots} video placeholder tokens (id {cfg.video_token_index}) but "
            f"pixel_values_videos gives {n_videos} video(s) x {per_video} tokens = {n_videos * per_video}")


def optional_array(array, dtype=None):
    """A device array of an optional input (images, videos, positions), None staying None."""
    return None if array is None else jnp.asarray(array, dtype)
