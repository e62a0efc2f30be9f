"""Video-LLaVA: two ViT towers, one projector, visual features scattered into a LLaMA's input.

The merge has static shapes (placeholder mask, per-row cumulative-sum index into the features,
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
    """Fill each row's slots (True in `is_slot` (B, L), in order) with that row's `features` (B, M, embed)
    in order: row b's k-th slot <- features[b, k].

    A gather batched over rows, so a batch-sharded program keeps every row's features on its own
    devices (no collective); slots past a row's features (none in valid inputs) read its last one.
    """
    index = jnp.clip(jnp.cumsum(is_slot, axis=1) - 1, 0, features.shape[1] - 1)
    picked = jnp.take_along_axis(features, index[..., None], axis=1)
    return jnp.where(is_slot[..., None], picked.astype(embeds.dtype), embeds)


def merge_features(embeds: jax.Array, is_slot: jax.Array, features: jax.Array, per_row: bool) -> jax.Array:
    """`scatter_features` for features (N, tokens, embed) of N media: per row (N = B x V, row b's V
    entries consecutive, in its slot order) or, not `per_row`, one stack for the whole batch in
    row-major slot order (the batch read as one long row)."""
    b, length, embed = embeds.shape
    if per_row:
        return scatter_features(embeds, is_slot, features.reshape(b, -1, features.shape[-1]))
    whole = scatter_features(embeds.reshape(1, b * length, embed), is_slot.reshape(1, -1),
                             features.reshape(1, -1, features.shape[-1]))
    return whole.reshape(b, length, embed)


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
        """(N, 3, H, W) -> (N, tokens_per_image, embed) projected features."""
        states = self.image_tower.hidden_states(pixel_values, self.cfg.feature_layers)
        if self.cfg.vision_feature_select_strategy == "default":
            states = [s[:, 1:] for s in states]
        return self.projector(jnp.concatenate(states, axis=-1))

    def video_features(self, pixel_values: jax.Array) -> jax.Array:
        """(N, T, 3, H, W) -> (N, T * (patches + 1), embed); every frame keeps its CLS token."""
        n, t = pixel_values.shape[:2]
        frames = pixel_values.reshape(n * t, *pixel_values.shape[2:])
        states = self.video_tower.hidden_states(frames, self.cfg.feature_layers, num_frames=t)
        features = self.projector(jnp.concatenate(states, axis=-1))
        return features.reshape(n, -1, features.shape[-1])

    def embed_inputs(
        self,
        input_ids: jax.Array,
        pixel_values_images: jax.Array | None = None,
        pixel_values_videos: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings with every image/video placeholder replaced by its projected feature.

        Media come in one of three layouts, told apart by their number of dims:
        - per row (training batches, `data_pipelines/batching.py`): images (B, I, 3, H, W), videos
          (B, V, T, 3, H, W); row b's slots take row b's media in order (unused entries never read),
          so a batch-sharded step keeps each row's features on its own devices;
        - a flat stack (inference, as the processor returns it): images (N, 3, H, W), videos
          (N, T, 3, H, W), matched to the placeholders of the whole batch in row-major order;
        - projected features (tokens, embed), e.g. from `vllava_jax.features.FeatureCache`, so the
          towers do not run again for a known medium; matched like a flat stack.
        The flat stack is the per-row layout with its unused entries dropped: `pixels[valid]`.
        """
        cfg = self.cfg
        is_image = input_ids == cfg.image_token_index
        is_video = input_ids == cfg.video_token_index
        embeds = self.language_model.embed(jnp.where(is_image | is_video, 0, input_ids))
        for media, is_slot, encode, flat_ndim in ((pixel_values_images, is_image, self.image_features, 4),
                                                  (pixel_values_videos, is_video, self.video_features, 5)):
            if media is None:
                continue
            if media.ndim == 2:
                features, per_row = media, False
            else:
                per_row = media.ndim == flat_ndim + 1
                features = encode(media.reshape(-1, *media.shape[2:]) if per_row else media)
            embeds = merge_features(embeds, is_slot, features, per_row)
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
