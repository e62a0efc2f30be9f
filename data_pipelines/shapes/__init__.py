"""The demo's synthetic world of moving shapes (`python -m vllava_jax.demo`), apart from the real
data pipeline: `world` writes the clips, images, annotations and held-out sets; `media` draws and
encodes them; `tokenizer` trains the sentencepiece model and writes the tokenizer files."""

from data_pipelines.shapes.world import ShapesData, ShapesSpec, generate  # noqa: F401
