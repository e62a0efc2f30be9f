"""vllava_jax: Video-LLaVA in JAX/Flax NNX, numerically faithful to the PyTorch reference."""

from vllava_jax.config import TextConfig, VideoLlavaConfig, VisionConfig
from vllava_jax.errors import CheckpointError, ConfigError, InputError, VllavaError
from vllava_jax.model import VideoLlava, load_pretrained
from vllava_jax.processing.processor import Processor

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Processor",
    "TextConfig",
    "VideoLlava",
    "VideoLlavaConfig",
    "VisionConfig",
    "VllavaError",
    "load_pretrained",
]
