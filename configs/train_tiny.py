"""A tiny Video-LLaVA trained from scratch in seconds: tests and smoke runs of the trainer."""

import ml_collections

from configs import tiny_random, train_defaults


def get_config() -> ml_collections.ConfigDict:
    config = train_defaults.get_config()
    config.model = tiny_random.get_config().model
    return config
