"""The user-facing model: `load_pretrained(path)` and `VideoLlava`, called like transformers' model.

`VideoLlava` holds the NNX graph definition and parameter state apart, checks inputs on the host
(where a clear error can still name the shape at fault), and runs one jitted pure function, under
`jax.set_mesh` of its mesh when it has one (so activations are placed by the rules table too).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from vllava_jax import generation
from vllava_jax.checkpoint import orbax
from vllava_jax.checkpoint.detect import PARAMS_DIR
from vllava_jax.checkpoint.read import leaves, open_source
from vllava_jax.config import DTypePolicy, VideoLlavaConfig
from vllava_jax.inputs import check_inputs, optional_array
from vllava_jax.modeling.video_llava import VideoLlavaModel
from vllava_jax.sharding import MAX_REPLICATED_FRACTION, check_sufficiently_sharded, mesh_context, state_shardings


class ModelOutput(NamedTuple):
    logits: jax.Array


@functools.partial(jax.jit, static_argnums=0)
def _forward(graphdef, state, input_ids, attention_mask, pixel_values_images, pixel_values_videos, position_ids):
    model = nnx.merge(graphdef, state)
    return model(input_ids, attention_mask, pixel_values_images, pixel_values_videos, position_ids)


class VideoLlava:
    def __init__(self, config: VideoLlavaConfig, policy: DTypePolicy, graphdef: nnx.GraphDef, state: nnx.State,
                 mesh: jax.sharding.Mesh | None = None):
        """`mesh`: the one `state` is placed on (`load_pretrained(mesh=...)`); every jitted call runs
        under `jax.set_mesh(mesh)`. None: one device."""
        self.config = config
        self.policy = policy
        self.graphdef = graphdef
        self.state = state
        self.mesh = mesh

    @classmethod
    def random(cls, config: VideoLlavaConfig, dtype: str | DTypePolicy = "float32", seed: int = 0,
               remat: bool = False):
        """A randomly initialized model (tests, demos, training from scratch)."""
        policy = DTypePolicy.resolve(dtype)
        return cls(config, policy, *nnx.split(VideoLlavaModel(config, policy, nnx.Rngs(seed), remat)))

    @property
    def module(self) -> VideoLlavaModel:
        return nnx.merge(self.graphdef, self.state)

    def num_params(self) -> int:
        return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.state))

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        pixel_values_images=None,
        pixel_values_videos=None,
        position_ids=None,
    ) -> ModelOutput:
        """Logits (batch, len, vocab) for inputs laid out as transformers' VideoLlavaProcessor returns them.

        Positions default to the running count of attended tokens, so left padding is harmless.
        """
        input_ids = np.asarray(input_ids)
        attention_mask = np.ones_like(input_ids) if attention_mask is None else np.asarray(attention_mask)
        check_inputs(self.config, input_ids, attention_mask, pixel_values_images, pixel_values_videos)
        with mesh_context(self.mesh), jax.default_matmul_precision(self.policy.matmul_precision):
            logits = _forward(
                self.graphdef,
                self.state,
                jnp.asarray(input_ids, jnp.int32),
                jnp.asarray(attention_mask, jnp.int32),
                optional_array(pixel_values_images),
                optional_array(pixel_values_videos),
                optional_array(position_ids, jnp.int32),
            )
        return ModelOutput(logits=logits)

    def generate(
        self,
        input_ids,
        attention_mask=None,
        pixel_values_images=None,
        pixel_values_videos=None,
        *,
        max_new_tokens: int = 32,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        key: jax.Array | None = None,
    ) -> np.ndarray:
        """Prompt + new tokens (batch, length + steps), greedy unless temperature > 0; pad after EOS.

        Prompts must be left padded. EOS and pad default to the config's (pad falls back to EOS,
        as in transformers).
        """
        sampling = generation.sampling_config(self.config, max_new_tokens, temperature, top_k, top_p, eos_token_id,
                                              pad_token_id)
        return generation.generate(self, input_ids, attention_mask, pixel_values_images, pixel_values_videos,
                                   sampling=sampling, key=key)


def load_pretrained(path: epath.PathLike, dtype: str | DTypePolicy = "float32", remat: bool | str = False,
                    mesh: jax.sharding.Mesh | None = None,
                    max_replicated_fraction: float = MAX_REPLICATED_FRACTION) -> VideoLlava:
    """Load a checkpoint dir: transformers, original Video-LLaVA or ours (`checkpoint.detect` tells).

    `dtype` names one dtype for parameters and compute, or is a `DTypePolicy` (training keeps
    float32 master weights and computes in bfloat16).

    With a `mesh`, every parameter lands on its `sharding.state_shardings` placement (ours is
    restored straight onto it) and the model runs under that mesh; without one, on the default
    device. A mesh that would leave more than `max_replicated_fraction` of the parameter bytes
    replicated over fsdp x tensor is refused (`sharding.check_sufficiently_sharded`) before any
    weight is read.
    """
    source = open_source(path)
    policy = DTypePolicy.resolve(dtype)
    abstract = nnx.eval_shape(lambda: VideoLlavaModel(source.config, policy, nnx.Rngs(0), remat))
    graphdef, abstract_state = nnx.split(abstract)
    flat = dict(nnx.to_flat_state(abstract_state))
    if mesh is None:
        placement = {p: jax.sharding.SingleDeviceSharding(jax.devices()[0]) for p in flat}
    else:
        check_sufficiently_sharded(abstract_state, mesh, max_replicated_fraction=max_replicated_fraction)
        placement = {p: v.get_value() for p, v in nnx.to_flat_state(state_shardings(abstract_state, mesh))}
    if source.format == "ours":
        targets = {p: jax.ShapeDtypeStruct(v.shape, policy.param_dtype, sharding=placement[p]) for p, v in flat.items()}
        values = orbax.restore(source.path / PARAMS_DIR, targets)
    else:
        shapes = {p: tuple(v.shape) for p, v in flat.items()}
        values = {p: jax.device_put(leaf.whole(), placement[p])
                  for p, leaf in leaves(source, shapes, policy.param_dtype).items()}
    state = nnx.from_flat_state([(p, v.replace(values[p])) for p, v in flat.items()])
    return VideoLlava(source.config, policy, graphdef, state, mesh)
