"""Visual features computed once per image or video file and reused by every prompt about it.

Benchmarks ask many questions of one medium (MSVD-QA about 20 per clip) and a server sees the
same upload again; running the CLIP tower and projector once per medium instead of once per
question is the cheap half of a prefill saved. Entries are keyed by the SHA-256 of the file's
bytes plus the media kind and the preprocessing that shapes the pixels (`fingerprint`), so a
renamed copy hits and an edited file misses; a file's hash is remembered per (path, size, mtime).
Media that arrive as bytes (a server's `data:` URLs) get the same key from `bytes_key`, so an
upload and the file it came from share one entry.
Entries are the projected features, (tokens, embed) on the device, evicted least recently used
once their bytes exceed `max_bytes` (default 1 GiB: about 60 bfloat16 8-frame videos of the 7B, a
budget a 16 GiB chip holding the bfloat16 7B can spare).

Prefill takes features in place of pixels: pass the concatenation of a batch's entries (in
placeholder order) as `pixel_values_images` / `pixel_values_videos` to `generation.generate` or
`stream`; a 2-D array there is read as projected features (`VideoLlavaModel.embed_inputs`).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vllava_jax.sharding import mesh_context

KINDS = ("image", "video")


@functools.partial(jax.jit, static_argnums=(0, 3))
def _project(graphdef, state, pixels, kind: str):
    """(N, ...) pixels -> (N, tokens, embed) projected features, one tower call for the batch."""
    model = nnx.merge(graphdef, state)
    return model.video_features(pixels) if kind == "video" else model.image_features(pixels)


def bytes_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def preprocessing_fingerprint(processor) -> str:
    """The preprocessing that shapes a medium's pixels: part of every feature-cache key."""
    return (f"{processor.num_frames}/{processor.video_transform}/{processor.size}/{processor.crop_size}/"
            f"{processor.pad_to_square}")


class FeatureCache:
    """Per-medium projected features for one model; `tower_runs` counts media sent through a tower.

    Not thread-safe: one thread owns the entries (a server's engine thread). `bytes_key` reads
    only the fingerprint and may be called from any thread.
    """

    def __init__(self, model, fingerprint: str = "", max_bytes: int = 1 << 30):
        self.model, self.fingerprint, self.max_bytes = model, fingerprint, max_bytes
        self.entries: collections.OrderedDict[str, jax.Array] = collections.OrderedDict()
        self.bytes = self.tower_runs = 0
        self._digests: dict[tuple, str] = {}

    def key(self, kind: str, path: str) -> str:
        """The cache key of a media file: its content, its kind and the preprocessing fingerprint."""
        self._key(kind, "")  # a bad kind is refused before the file is read
        stat = os.stat(path)
        memo = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
        if memo not in self._digests:
            self._digests[memo] = file_digest(path)
        return self._key(kind, self._digests[memo])

    def bytes_key(self, kind: str, data: bytes) -> str:
        """The cache key of a medium given as its file's bytes: the same key `key` gives that file."""
        return self._key(kind, bytes_digest(data))

    def _key(self, kind: str, digest: str) -> str:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return f"{kind}:{self.fingerprint}:{digest}"

    def __contains__(self, key: str) -> bool:
        """Whether `key` is cached; a found entry counts as just used, so the batch that asked keeps it."""
        if key not in self.entries:
            return False
        self.entries.move_to_end(key)
        return True

    def __getitem__(self, key: str) -> jax.Array:
        self.entries.move_to_end(key)
        return self.entries[key]

    def add(self, kind: str, keys: list[str], pixels: np.ndarray) -> None:
        """Encode a stack of preprocessed media ((N, C, H, W) images or (N, T, C, H, W) videos) in one
        tower call and store each under its key."""
        if len(keys) != len(pixels):
            raise ValueError(f"{len(keys)} keys for {len(pixels)} media")
        if not keys:
            return
        with mesh_context(self.model.mesh), jax.default_matmul_precision(self.model.policy.matmul_precision):
            features = _project(self.model.graphdef, self.model.state, jnp.asarray(pixels), kind)
        self.tower_runs += len(keys)
        for key, entry in zip(keys, features):
            if key in self.entries:
                self.bytes -= self.entries.pop(key).nbytes
            self.entries[key] = entry
            self.bytes += entry.nbytes
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            self.bytes -= self.entries.popitem(last=False)[1].nbytes

    def batch(self, keys: list[str]) -> jax.Array:
        """The entries of `keys` concatenated in order: what prefill takes for one batch."""
        return jnp.concatenate([self[k] for k in keys], axis=0)
