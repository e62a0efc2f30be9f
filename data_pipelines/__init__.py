"""Grain input pipelines, TFDS builders and the synthetic shapes generator."""
