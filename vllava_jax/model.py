"""The user-facing model: `load_pretrained(path)` and `VideoLlava`, called like transformers' model.

`VideoLlava` holds the NNX graph definition and parameter state apart, checks inputs on the host
(where a clear error can still name the shape at fault), and runs one jitted pure function.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from vllava_jax.checkpoint import hf
from vllava_jax.checkpoint.safetensors_io import SafetensorsReader
from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.errors import CheckpointError, InputError
from vllava_jax.modeling.video_llava import VideoLlavaModel


class ModelOutput(NamedTuple):
    logits: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, attention_mask, pixel_values_images, pixel_values_videos, position_ids):
    model = nnx.merge(graphdef, state)
    return model(input_ids, attention_mask, pixel_values_images, pixel_values_videos, position_ids)


class VideoLlava:
    def __init__(self, config: VideoLlavaConfig, policy: DTypePolicy, graphdef: nnx.GraphDef, state: nnx.State):
        self.config = config
        self.policy = policy
        self.graphdef = graphdef
        self.state = state

    @classmethod
    def random(cls, config: VideoLlavaConfig, dtype: str = "float32", seed: int = 0, remat: bool = False):
        """A randomly initialized model (tests, demos, training from scratch)."""
        policy = DTypePolicy.from_name(dtype)
        return cls(config, policy, *nnx.split(VideoLlavaModel(config, policy, nnx.Rngs(seed), remat)))

    @property
    def module(self) -> VideoLlavaModel:
        return nnx.merge(self.graphdef, self.state)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state))

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        pixel_values_images=None,
        pixel_values_videos=None,
        position_ids=None,
    ) -> ModelOutput:
        """Logits (batch, len, vocab) for inputs laid out as transformers' VideoLlavaProcessor returns them.

        Positions default to the running count of attended tokens, so left padding is harmless.
        """
        input_ids = np.asarray(input_ids)
        attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        check_inputs(self.config, input_ids, attention_mask, pixel_values_images, pixel_values_videos)
        with jax.default_matmul_precision(self.policy.matmul_precision):
            logits = _forward(
                self.graphdef,
                self.state,
                jnp.asarray(input_ids, jnp.int32),
                jnp.asarray(attention_mask, jnp.int32),
                None if pixel_values_images is None else jnp.asarray(pixel_values_images),
                None if pixel_values_videos is None else jnp.asarray(pixel_values_videos),
                None if position_ids is None else jnp.asarray(position_ids, jnp.int32),
            )
        return ModelOutput(logits=logits)


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
    if images is not None:
        vc = cfg.vision_config
        _check_pixels("pixel_values_images", images, 4, vc.num_channels, vc.image_size, "(N, C, H, W)")
        n_images = np.shape(images)[0]
    if n_image_slots != n_images * per_image:
        raise InputError(
            f"input_ids hold {n_image_slots} image placeholder tokens (id {cfg.image_token_index}) but "
            f"pixel_values_images gives {n_images} image(s) x {per_image} tokens = {n_images * per_image}")

    n_video_slots = int((input_ids == cfg.video_token_index).sum())
    n_videos, per_video = 0, 0
    if videos is not None:
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


def load_pretrained(path: epath.PathLike, dtype: str = "float32", remat: bool = False) -> VideoLlava:
    """Load a transformers-format Video-LLaVA checkpoint dir (config.json + *.safetensors)."""
    path = epath.Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a directory; pass a checkpoint dir holding config.json")
    config = VideoLlavaConfig.from_json(path / "config.json")
    policy = DTypePolicy.from_name(dtype)
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(config, policy, nnx.Rngs(0), remat))
    graphdef, abstract_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abstract_state))
    shapes = {p: tuple(v.shape) for p, v in flat.items()}
    values = dict(hf.read_params(SafetensorsReader(path), config, shapes, policy.param_dtype))
    state = nnx.from_flat_state([(p, v.replace(jnp.asarray(values[p]))) for p, v in flat.items()])
    return VideoLlava(config, policy, graphdef, state)
