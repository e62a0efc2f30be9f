"""Shared fixtures: tiny random transformers Video-LLaVA models saved to disk (the parity oracle)."""

from __future__ import annotations

import os

os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
from transformers import VideoLlavaForConditionalGeneration

from tests import oracle


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """name -> (dir, fresh torch model) for each tiny config in `oracle.TINY_CONFIGS`, saved once.

    The torch model is reloaded on every request: transformers' dynamic RoPE keeps the frequencies
    of the longest sequence a model instance has seen, so a shared instance would depend on test order.
    """
    paths = {}

    def get(name: str):
        if name not in paths:
            paths[name] = tmp_path_factory.mktemp(name)
            oracle.save_tiny_model(paths[name], **oracle.TINY_CONFIGS[name])
        return paths[name], VideoLlavaForConditionalGeneration.from_pretrained(paths[name]).eval()

    return get


@pytest.fixture
def rng():
    return np.random.default_rng(0)
