"""Deterministic random batches in the data pipeline's layout with a resumable state: smoke runs, tests, benchmarks."""

from __future__ import annotations

import numpy as np


class SyntheticBatches:
    """Batch k depends only on (seed, k): resuming at k gives the very batches an unbroken run sees."""

    def __init__(self, config, rows: int = 8, length: int = 48, seed: int = 0, process: tuple[int, int] = (0, 1)):
        """`process` = (index, count): this process's contiguous share of the rows, as a data shard."""
        self.config, self.rows, self.length, self.seed = config, rows, length, seed
        self.index = 0
        self.process = process

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, self.index])
        cfg = self.config
        size = cfg.vision_config.image_size
        per_image = cfg.image_seq_length
        ids = rng.integers(3, cfg.text_config.vocab_size - 4, (self.rows, self.length)).astype(np.int32)
        ids[:, 0] = 1
        carried = np.arange(self.rows) % 2 == 0  # every other row carries an image
        ids[carried, 2: 2 + per_image] = cfg.image_token_index
        labels = np.where(np.arange(self.length) >= 2 + per_image + 4, ids, -100).astype(np.int32)
        images = np.zeros((self.rows, 1, 3, size, size), np.float32)
        images[carried, 0] = rng.standard_normal((carried.sum(), 3, size, size))
        self.index += 1
        shard, count = self.process
        rows = slice(shard * self.rows // count, (shard + 1) * self.rows // count)
        return {
            "input_ids": ids[rows],
            "labels": labels[rows],
            "attention_mask": np.ones_like(ids[rows]),
            "positions": np.broadcast_to(np.arange(self.length, dtype=np.int32), ids[rows].shape).copy(),
            "segment_ids": np.ones_like(ids[rows]),
            "pixel_values_images": images[rows],
            "image_valid": carried[rows, None],
        }

    def get_state(self) -> dict:
        return {"index": self.index}

    def set_state(self, state: dict) -> None:
        self.index = int(state["index"])
