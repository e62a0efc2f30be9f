"""Logical axes map onto a (data, fsdp, tensor) mesh of 8 simulated CPU devices: same logits and tokens."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import numpy as np
    import vllava_jax
    from flax import nnx
    from jax.sharding import PartitionSpec as P
    from tests import oracle
    from vllava_jax.sharding import make_mesh, shard_state

    config = vllava_jax.VideoLlavaConfig.from_hf_dict(oracle.hf_config().to_dict())
    model = vllava_jax.VideoLlava.random(config, seed=1)
    rng = np.random.default_rng(0)
    ids = oracle.make_ids(rng, [3, ("image", config.image_seq_length), 5])[None].repeat(4, 0)
    images = rng.standard_normal((4, 3, 28, 28)).astype(np.float32)
    single = np.asarray(model(ids, pixel_values_images=images).logits)
    single_tokens = model.generate(ids, pixel_values_images=images, max_new_tokens=5, eos_token_id=[])

    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model.state = shard_state(model.state, mesh)
    flat = dict(nnx.to_flat_state(model.state))
    spec = lambda *path: flat[path][...].sharding.spec
    assert spec("language_model", "layers", "attn", "q", "kernel") == P(None, "fsdp", "tensor", None), spec("language_model", "layers", "attn", "q", "kernel")
    assert spec("language_model", "layers", "mlp", "down", "kernel") == P(None, "tensor", "fsdp")
    assert spec("language_model", "lm_head") == P("fsdp", "tensor")
    # the tiny tower's MLP width 37 does not divide over tensor=2: replicated, not an error
    assert spec("image_tower", "layers", "mlp", "fc1", "kernel") == P(None, None, None)
    assert spec("image_tower", "layers", "attn", "q", "kernel") == P(None, None, "tensor", None)
    assert spec("projector", "linear_1", "kernel") == P(None, "tensor")
    sharded = np.asarray(model(ids, pixel_values_images=images).logits)
    err = np.abs(sharded - single).max()
    assert err < 1e-5 * np.abs(single).max(), err
    # generation on the sharded parameters: tensor-parallel heads, batch over data x fsdp
    sharded_tokens = model.generate(ids, pixel_values_images=images, max_new_tokens=5, eos_token_id=[])
    np.testing.assert_array_equal(sharded_tokens, single_tokens)
    print("OK", err)
""")


def test_sharded_model_matches_single_device():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_unknown_logical_axis_is_refused():
    import jax
    import pytest

    from vllava_jax.sharding import logical_to_spec, make_mesh

    mesh = make_mesh(devices=jax.devices()[:1])
    with pytest.raises(KeyError, match="'experts'"):
        logical_to_spec(("experts",), (4,), mesh)
