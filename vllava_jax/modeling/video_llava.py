"""Video-LLaVA: two ViT towers, one projector, visual features scattered into a LLaMA's input.

The merge has static shapes (placeholder mask, cumulative-sum index into the flat feature list,
`where`), so it jits once per input shape. Placeholder counts are checked outside jit, by
`vllava_jax.model.VideoLlava`, where a clear error can still be raised.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.modeling.llama import LlamaDecoder
from vllava_jax.modeling.projector import Projector
from vllava_jax.modeling.vit import VisionTower


def scatter_features(embeds: jax.Array, is_slot: jax.Array, features: jax.Array) -> jax.Array:
    """Fill the slots (True in `is_slot`, row-major order) with the rows of `features` in order."""
    b, l = is_slot.shape
    index = jnp.cumsum(is_slot.reshape(-1)) - 1
    index = jnp.clip(index, 0, features.shape[0] - 1).reshape(b, l)
    return jnp.where(is_slot[..., None], features[index].astype(embeds.dtype), embeds)


def positions_from_mask(attention_mask: jax.Array) -> jax.Array:
    """Positions count only attended tokens, so left padding does not shift them."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def parameter_shapes(cfg: VideoLlavaConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Every parameter's shape for `cfg`, by path, without allocating them: what a checkpoint
    reader checks a checkpoint against."""
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(cfg, DTypePolicy(), nnx.Rngs(0)))
    return {p: tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(abstract))}


class VideoLlavaModel(nnx.Module):
    def __init__(self, cfg: VideoLlavaConfig, policy: DTypePolicy, rngs: nnx.Rngs, remat: bool | str = False):
        self.cfg = cfg
        self.image_tower = VisionTower(cfg.vision_config, policy, rngs, remat)
        self.video_tower = VisionTower(cfg.video_tower_config, policy, rngs, remat)
        feature_dim = cfg.vision_config.hidden_size * len(cfg.feature_layers)
        self.projector = Projector(feature_dim, cfg.text_config.hidden_size, cfg.projector_hidden_act,
                                   cfg.multimodal_projector_bias, policy, rngs)
        self.language_model = LlamaDecoder(cfg.text_config, policy, rngs, remat)

    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """(N, 3, H, W) -> (N * tokens_per_image, embed) projected features."""
        states = self.image_tower.hidden_states(pixel_values, self.cfg.feature_layers)
        if self.cfg.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]
        features = self.projector(jnp.concatenate(states, axis=-1))
        return features.reshape(-1, features.shape[-1])

    def video_features(self, pixel_values: jax.Array) -> jax.Array:
        """(N, T, 3, H, W) -> (N * T * (patches + 1), embed); every frame keeps its CLS token."""
        n, t = pixel_values.shape[:2]
        frames = pixel_values.reshape(n * t, *pixel_values.shape[2:])
        states = self.video_tower.hidden_states(frames, self.cfg.feature_layers, num_frames=t)
        features = self.projector(jnp.concatenate(states, axis=-1))
        return features.reshape(-1, features.shape[-1])

    def embed_inputs(
        self,
        input_ids: jax.Array,
        pixel_values_images: jax.Array | None = None,
        pixel_values_videos: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings with every image/video placeholder replaced by its projected feature.

        A 2-D `pixel_values_*` is taken as features already projected ((tokens, embed), e.g. from
        `vllava_jax.features.FeatureCache`), so the towers do not run again for a known medium."""
        cfg = self.cfg
        is_image = input_ids == cfg.image_token_index
        is_video = input_ids == cfg.video_token_index
        embeds = self.language_model.embed(jnp.where(is_image | is_video, 0, input_ids))
        if pixel_values_images is not None:
            features = pixel_values_images if pixel_values_images.ndim == 2 else self.image_features(pixel_values_images)
            embeds = scatter_features(embeds, is_image, features)
        if pixel_values_videos is not None:
            features = pixel_values_videos if pixel_values_videos.ndim == 2 else self.video_features(pixel_values_videos)
            embeds = scatter_features(embeds, is_video, features)
        return embeds

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        pixel_values_images: jax.Array | None = None,
        pixel_values_videos: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Logits (batch, len, vocab). Packed rows pass `segment_ids` and per-segment `position_ids`."""
        return self.language_model.logits(self.final_hidden(input_ids, attention_mask, pixel_values_images,
                                                             pixel_values_videos, position_ids, segment_ids))

    def final_hidden(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array,
        pixel_values_images: jax.Array | None = None,
        pixel_values_videos: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """The decoder's last hidden states (batch, len, embed), for a loss that needs logits at a few positions."""
        embeds = self.embed_inputs(input_ids, pixel_values_images, pixel_values_videos)
        if position_ids is None:
            position_ids = positions_from_mask(attention_mask)
        return self.language_model.hidden_states(embeds, position_ids, attention_mask, segment_ids)
