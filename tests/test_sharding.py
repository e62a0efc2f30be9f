"""Logical axes map onto a (data, fsdp, tensor) mesh of 8 simulated CPU devices: same logits and tokens;
a model loaded onto a mesh runs with its activations split over the batch axes; a mesh that would
replicate too many parameter bytes is refused."""

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
    model.state, model.mesh = shard_state(model.state, mesh), mesh
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


def run_on_8_devices(script: str) -> None:
    """`script` in a fresh process (the device count is fixed when JAX starts); it prints OK when done."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600)
    assert result.returncode == 0 and "OK" in result.stdout, result.stderr[-3000:]


def test_sharded_model_matches_single_device():
    run_on_8_devices(SCRIPT)


def test_unknown_logical_axis_is_refused():
    import jax
    import pytest

    from vllava_jax.sharding import logical_to_spec, make_mesh

    mesh = make_mesh(devices=jax.devices()[:1])
    with pytest.raises(KeyError, match="'experts'"):
        logical_to_spec(("experts",), (4,), mesh)


LOADED = textwrap.dedent("""
    import os, tempfile
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax
    import numpy as np
    import vllava_jax
    from jax.sharding import PartitionSpec as P
    from tests import oracle
    from vllava_jax.modeling import llama
    from vllava_jax.sharding import make_mesh

    placed = []  # where the compiled forward keeps the decoder's activations
    pinned = llama.constrain

    def spy(x, names):
        out = pinned(x, names)
        jax.debug.inspect_array_sharding(out, callback=lambda sharding: placed.append(sharding.spec))
        return out

    path = tempfile.mkdtemp()
    oracle.save_tiny_model(path)
    config = vllava_jax.VideoLlavaConfig.from_json(os.path.join(path, "config.json"))
    rng = np.random.default_rng(0)
    ids = oracle.make_ids(rng, [3, ("image", config.image_seq_length), 5])[None].repeat(8, 0)
    images = rng.standard_normal((8, 3, 28, 28)).astype(np.float32)
    single = np.asarray(vllava_jax.load_pretrained(path)(ids, pixel_values_images=images).logits)

    llama.constrain = spy
    model = vllava_jax.load_pretrained(path, mesh=make_mesh(data=2, fsdp=4, tensor=1))
    logits = model(ids, pixel_values_images=images).logits
    assert placed and all(spec[0] == ("data", "fsdp") for spec in placed), placed
    assert logits.sharding.spec[0] == ("data", "fsdp"), logits.sharding
    err = np.abs(np.asarray(logits) - single).max()
    assert err < 1e-5 * np.abs(single).max(), err

    # 4 heads and 2 key/value heads do not divide tensor=8: the attention weights would be whole on every device
    try:
        vllava_jax.load_pretrained(path, mesh=make_mesh(data=1, fsdp=1, tensor=8))
    except vllava_jax.ConfigError as e:
        assert "max_replicated_fraction" in str(e) and "language_model/layers/attn" in str(e), e
    else:
        raise AssertionError("tensor=8 was accepted")
    vllava_jax.load_pretrained(path, mesh=make_mesh(data=1, fsdp=1, tensor=8), max_replicated_fraction=1.0)
    print("OK", placed)
""")


def test_model_loaded_on_a_mesh_runs_with_activations_split_over_batch():
    run_on_8_devices(LOADED)


def one_weight(shape, names):
    """The abstract state of one 2-D weight with logical axes `names`."""
    import jax
    from flax import nnx

    class Dense(nnx.Module):
        def __init__(self):
            self.kernel = nnx.Param(jax.numpy.zeros(shape), out_sharding=names, eager_sharding=False)

    return nnx.state(nnx.eval_shape(Dense))


def abstract_mesh(data, fsdp, tensor):
    from jax.sharding import AbstractMesh

    from vllava_jax.sharding import MESH_AXES

    return AbstractMesh((data, fsdp, tensor), MESH_AXES)


def test_replicated_bytes_check_refuses_a_mesh_that_cannot_split_a_weight():
    import pytest

    from vllava_jax.errors import ConfigError
    from vllava_jax.sharding import ReplicatedDimensionWarning, check_sufficiently_sharded, state_shardings

    state = one_weight((12, 10), ("embed", "mlp"))
    with pytest.raises(ConfigError, match=r"87\.5% .*kernel \(12, 10\): dimension 1 \('mlp', size 10\) "
                                          r"does not divide mesh axis tensor of size 8"):
        check_sufficiently_sharded(state, abstract_mesh(1, 1, 8))
    check_sufficiently_sharded(state, abstract_mesh(1, 1, 8), max_replicated_fraction=0.9)
    check_sufficiently_sharded(state, abstract_mesh(8, 1, 1))  # pure data parallel replicates by design
    check_sufficiently_sharded(state, abstract_mesh(2, 2, 2))  # 12 and 10 divide 2
    # rows over fsdp=4 (12 divides), columns whole though tensor=2 would split them: half of it is a copy
    with pytest.raises(ConfigError, match=r"50\.0%"):
        check_sufficiently_sharded(one_weight((12, 9), ("embed", "mlp")), abstract_mesh(1, 4, 2))
    # a dimension the rules replicate on purpose (the towers' width) is no excess
    check_sufficiently_sharded(one_weight((12, 10), ("vision_embed", "vision_embed")), abstract_mesh(1, 4, 2))
    with pytest.warns(ReplicatedDimensionWarning, match=r"kernel \(12, 10\): dimension 1 \('mlp', size 10\) "
                                                        r"does not divide mesh axis tensor of size 8"):
        state_shardings(state, abstract_mesh(1, 1, 8))


def test_media_buffers_split_over_every_batch_axis_with_their_rows():
    """The trainer's per-row image/video buffers go where their rows go (data x fsdp), not replicated
    over fsdp when data = 1 (0.65 GiB per chip at 7B stage 2)."""
    from jax.sharding import AbstractMesh, PartitionSpec as P

    from vllava_jax.train.loop import batch_shardings

    mesh = AbstractMesh((1, 4, 2), ("data", "fsdp", "tensor"))
    shapes = {"input_ids": (1, 8, 64), "pixel_values_images": (1, 8, 1, 3, 28, 28),
              "pixel_values_videos": (1, 8, 1, 8, 3, 28, 28)}
    specs = {k: s.spec for k, s in batch_shardings(shapes, mesh).items()}
    assert specs["input_ids"] == P(None, ("data", "fsdp"), None)
    assert specs["pixel_values_images"][:2] == specs["pixel_values_videos"][:2] == (None, ("data", "fsdp"))
