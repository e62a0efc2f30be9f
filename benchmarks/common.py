"""Shared by the benchmark scripts: the small config, same-weights model pairs, honest timing."""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch
from transformers import VideoLlavaConfig, VideoLlavaForConditionalGeneration

import vllava_jax

VOCAB = 32064
IMAGE_TOKEN, VIDEO_TOKEN = 32000, 32001


def small_config(image_size: int) -> VideoLlavaConfig:
    """ViT 12x384 towers, LLaMA 12x768: the small config of the performance issues."""
    return VideoLlavaConfig(
        vision_config=dict(hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                           image_size=image_size, patch_size=14),
        text_config=dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                         vocab_size=VOCAB, max_position_embeddings=4096),
        image_token_index=IMAGE_TOKEN, video_token_index=VIDEO_TOKEN)


def model_pair(config: VideoLlavaConfig, seed: int = 0, remat: bool | str = False):
    """(transformers model, our model with `remat`) holding the same random weights, float32."""
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(seed)
        reference = VideoLlavaForConditionalGeneration(config).eval()
        reference.save_pretrained(tmp)
        return reference, vllava_jax.load_pretrained(tmp, remat=remat)


def video_prompt(rng, batch: int, image_size: int, text_tokens: int):
    """`batch` identical-length prompts, each text around one 8-frame video, and their pixels."""
    per_video = 8 * ((image_size // 14) ** 2 + 1)
    half = text_tokens // 2
    row = np.concatenate([rng.integers(3, IMAGE_TOKEN, half), np.full(per_video, VIDEO_TOKEN),
                          rng.integers(3, IMAGE_TOKEN, half)])
    videos = rng.standard_normal((batch, 8, 3, image_size, image_size)).astype(np.float32)
    return np.tile(row, (batch, 1)), videos


def synchronize() -> None:
    """Wait for torch's queued GPU work (a no-op on the CPU), so the clock stops when it is done."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def median_seconds(fn, runs: int) -> float:
    """Median wall time of `fn` over `runs` calls after one warm-up call (compilation)."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
