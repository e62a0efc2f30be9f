"""The quickstart job: a tiny random Video-LLaVA, written as a transformers checkpoint, loaded back,
asked about a generated clip.

    python -m vllava_jax.demo --workdir /tmp/vllava_demo

It runs the real code paths (checkpoint export and loading, PyAV decoding, CLIP transform, the
jitted model) on random weights, so its answer is noise by design; it proves the machine and the
install work end to end without downloading anything.
"""

from __future__ import annotations

import argparse
import time

import av
import numpy as np
from etils import epath
from tqdm import tqdm

import vllava_jax
from configs import tiny_random
from vllava_jax.checkpoint.export import save_hf
from vllava_jax.processing.image import clip_transform
from vllava_jax.processing.video import read_frames


def write_moving_square_clip(path: epath.Path, frames: int = 32, size: int = 64, fps: int = 8) -> None:
    """A red square sliding left to right on grey, encoded with PyAV."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size, size, 3), 128, np.uint8)
            x = int(i * (size - 16) / (frames - 1))
            image[24:40, x:x + 16] = (220, 30, 30)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def greedy_continue(model: vllava_jax.VideoLlava, ids: np.ndarray, videos: np.ndarray, steps: int) -> np.ndarray:
    """Append `steps` argmax tokens, re-running the whole prompt each step (KV caching is generate's job)."""
    for _ in tqdm(range(steps), desc="greedy tokens", leave=False):
        logits = model(ids, pixel_values_videos=videos).logits
        ids = np.concatenate([ids, np.asarray(logits[:, -1].argmax(-1))[:, None]], axis=1)
    return ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="directory for the clip and the tiny checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--new-tokens", type=int, default=8, help="tokens to decode greedily")
    args = parser.parse_args(argv)

    workdir = epath.Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = tiny_random.get_config()
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(cfg.model.to_dict())
    start = time.perf_counter()
    with tqdm(total=4, desc="demo") as bar:
        clip = workdir / "moving_square.mp4"
        write_moving_square_clip(clip)
        bar.update()
        checkpoint = save_hf(vllava_jax.VideoLlava.random(config, seed=args.seed), workdir / "tiny_random_hf",
                             overwrite=True)
        model = vllava_jax.load_pretrained(checkpoint)
        bar.update()
        frames = read_frames(clip, cfg.num_frames)
        videos = np.stack([clip_transform(f, config.video_tower_config.image_size) for f in frames])[None]
        bar.update()
        prompt = np.concatenate([[1], np.arange(10, 20), [config.video_token_index] * config.video_seq_length(
            cfg.num_frames), np.arange(30, 35)])[None]
        ids = greedy_continue(model, prompt, videos, args.new_tokens)
        bar.update()
    print(f"clip:        {clip} -> pixel_values_videos {videos.shape}")
    print(f"checkpoint:  {checkpoint} ({model.num_params():,} parameters, transformers format)")
    print(f"prompt:      {prompt.shape[1]} tokens ({config.video_seq_length(cfg.num_frames)} video slots)")
    print(f"new tokens:  {ids[0, prompt.shape[1]:].tolist()} (random weights: noise by design)")
    print(f"done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    main()
