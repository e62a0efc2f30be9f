"""Old import path of `checkpoint.detect` / `checkpoint.read`, kept only for `vllava_jax/model.py` and
`benchmarks/convert_memory.py` until they import the new modules; new code imports those."""

from vllava_jax.checkpoint.detect import PARAMS_DIR, detect  # noqa: F401
from vllava_jax.checkpoint.read import Source, leaves, open_source  # noqa: F401
from vllava_jax.modeling.video_llava import parameter_shapes as abstract_shapes  # noqa: F401
