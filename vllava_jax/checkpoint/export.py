"""Old import path of `checkpoint.write`'s transformers writer, kept only for
`benchmarks/convert_memory.py` until it imports `checkpoint.write`; new code imports that."""

from vllava_jax.checkpoint.write import DEFAULT_MAX_SHARD_BYTES, write_hf  # noqa: F401
