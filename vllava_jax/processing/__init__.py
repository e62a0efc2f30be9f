"""Turning user files (videos, images, prompts) into model inputs."""
