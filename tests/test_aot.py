"""Ahead-of-time compilation for TPU slices (`python -m vllava_jax.train.aot`) on this CPU machine.

Needs libtpu (`pip install -e ".[tpu-aot]"`, which .ci/run installs); without it these tests are
skipped with that reason. A tiny config compiles for a v5p:2x2x1 slice (4 chips) in seconds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("libtpu", reason='libtpu is not installed: pip install -e ".[tpu-aot]"')

from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from vllava_jax.errors import ConfigError  # noqa: E402
from vllava_jax.train import aot, hlo_stats, topology  # noqa: E402

TINY = ["--config=configs/train_tiny.py", "--topology=v5p:2x2x1", "--config.max_length=384",
        "--config.accum_steps=2", "--config.mesh.data=1", "--config.mesh.fsdp=-1", "--global_batch=16",
        "--gen_batch=4", "--prompt_len=192", "--new_tokens=16"]


@pytest.fixture(scope="module")
def v5p_8():
    return topology.devices(topology.parse_slice("v5p-8"))


@pytest.mark.parametrize("name, shape", [("v5p-8", (2, 2, 1)), ("v5p-64", (2, 4, 4)), ("v5p-128", (4, 4, 4)),
                                         ("v5e-256", (16, 16)), ("v5litepod-16", (4, 4)), ("v6e-64", (8, 8)),
                                         ("v4-32", (2, 2, 4)), ("v6e:4x8", (4, 8))])
def test_slice_names_give_the_chips_libtpu_has(name, shape):
    slice_ = topology.parse_slice(name)
    assert slice_.shape == shape
    assert len(topology.devices(slice_)) == slice_.chips == np.prod(shape)


@pytest.mark.parametrize("name", ["v5p-12", "v7x-8", "v5p", "v5e:2x2x2", "tpu-128"])
def test_bad_slice_names_are_refused(name):
    with pytest.raises(ConfigError, match="--topology"):
        topology.parse_slice(name)


def test_mesh_choice():
    recipe = dict(data=1, fsdp=-1, tensor=1)
    def sizes(choice):
        return choice.data, choice.fsdp, choice.tensor

    assert sizes(aot.choose_mesh(recipe, 64, 128, 32)) == (1, 64, 1)
    # v5e-256 at stage 2's 128 rows: the chips the rows cannot use go to tensor
    assert sizes(aot.choose_mesh(recipe, 256, 128, 32)) == (1, 128, 2)
    assert sizes(aot.choose_mesh(recipe, 64, 100, 32)) == (1, 4, 16)
    with pytest.raises(ConfigError, match="no mesh of 64 chips splits 99 rows"):
        aot.choose_mesh(recipe, 64, 99, 32)


def test_loop_aware_flops_match_xla_on_each_iteration(v5p_8):
    """XLA's cost analysis counts a loop body once: ours equals it without a loop and N times it with N."""
    mesh = Mesh(np.asarray(v5p_8), ("x",))
    whole = NamedSharding(mesh, PartitionSpec())

    def layers(w, x):  # a scan of matmuls, and an attention-like batched dot TPU rewrites as a convolution
        h = jax.lax.scan(lambda h, wi: (jnp.tanh(h @ wi), None), x, w)[0]
        return jnp.einsum("bqd,bkd->bqk", h.reshape(4, 64, 512), h.reshape(4, 64, 512))

    def compiled(n):
        w = jax.ShapeDtypeStruct((n, 512, 512), jnp.float32, sharding=whole)
        return jax.jit(layers).lower(w, jax.ShapeDtypeStruct((256, 512), jnp.float32, sharding=whole)).compile()

    one, ten = compiled(1), compiled(10)
    matmul = 2 * 256 * 512 * 512
    assert hlo_stats.Program(one.as_text()).cost().flops == pytest.approx(one.cost_analysis()["flops"], rel=1e-3)
    assert hlo_stats.Program(ten.as_text()).cost().flops == pytest.approx(
        one.cost_analysis()["flops"] + 9 * matmul, rel=1e-3)
    assert ten.cost_analysis()["flops"] < hlo_stats.Program(ten.as_text()).cost().flops / 5


def test_float_square_arrays_are_found(v5p_8):
    mesh = Mesh(np.asarray(v5p_8), ("x",))
    ids = jax.ShapeDtypeStruct((8, 384), jnp.int32, sharding=NamedSharding(mesh, PartitionSpec("x")))
    bias = jax.jit(lambda s: jnp.where(s[:, :, None] == s[:, None, :], 0.0, -1e9).sum(-1)).lower(ids).compile()
    found = hlo_stats.Program(bias.as_text()).float_arrays_ending_in({384})
    assert found and found[0].startswith("f32[2,384,384]")


def test_tiny_config_compiles_reports_and_a_small_budget_fails(capsys):
    """One compile of each program: the budget (0.03 GiB) holds generation (~0.01) but not the train step (~0.06).

    The train step's checks pass on 16 rows split over 4 chips: each row's visual features stay on its
    chip (a merge indexing the whole batch's features moves them all through an all-gather and an
    all-reduce on every chip, and fails the checks), and so do its logits in the LM head's
    every-position branch (a loop over rows all-reduced each row's (384 x 256) logits, and fails them)."""
    assert aot.main(["aot", *TINY, "--hbm_gib=0.03"]) == 1
    captured = capsys.readouterr()
    out = captured.out
    assert "4 chips of v5p" in out and "mesh data=1 fsdp=4 tensor=1" in out
    train, generation = out[out.index("train step:"):out.index("generation:")], out[out.index("generation:"):]
    for section in (train, generation):
        assert "arguments" in section and "temporaries" in section
        assert "all-gather" in section and "GiB in all" in section
        assert "checks (" in section and "FAILED" not in section
    assert "holding a microbatch's video features or a row's logits" in train
    assert "verdict: does not fit in 0.03 GiB (short by" in train
    assert "verdict: fits in 0.03 GiB" in generation
    assert "MFU" in train and "days" in train
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("error: the train step needs ") and "does not fit in 0.03 GiB by" in error


@pytest.mark.parametrize("flags, message", [
    (["--topology=v9-8"], "unknown TPU generation"),
    (["--config.nokey=1"], "nokey"),
    (["--global_batch=15"], "not a multiple of config.accum_steps 2"),
    (["--prompt_len=100"], "cannot hold one video"),
])
def test_user_mistakes_are_one_error_line(capsys, flags, message):
    assert aot.main(["aot", *TINY, *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_replicated_leaves_are_matched_by_path(v5p_8):
    """A compiled program drops inputs it never reads: its shardings must be matched by path, not order."""
    mesh = Mesh(np.asarray(v5p_8).reshape(1, 4, 1), ("data", "fsdp", "tensor"))
    split, whole = NamedSharding(mesh, PartitionSpec("fsdp")), NamedSharding(mesh, PartitionSpec())
    leaf = jax.ShapeDtypeStruct((64, 8), jnp.float32)
    params = {"language_model": {"a": leaf, "b": leaf, "unused": leaf}, "video_tower": {"w": leaf}}
    compiled = {"language_model": {"a": split, "b": whole}, "video_tower": {"w": whole}}
    found = aot.replicated(aot.flatten(params), compiled)
    assert found == ["['language_model']['b'] (64, 8)"]


@pytest.mark.parametrize("compute_dtype, kernels", [("bfloat16", True), ("float32", False)])
def test_the_tpu_train_step_runs_the_pallas_flash_kernel_in_16_bit(monkeypatch, compute_dtype, kernels):
    """The attention dispatch reads the TPU mesh `train.aot` lowers under, not this CPU host:
    16-bit compute gets the Pallas flash kernel (Mosaic `tpu_custom_call`s), float32 keeps XLA's."""
    from vllava_jax.train import programs

    lowered = []
    real = programs.lower_train_step
    monkeypatch.setattr(programs, "lower_train_step", lambda *a, **k: lowered.append(real(*a, **k)) or lowered[-1])
    flags = [f for f in TINY if not f.startswith(("--gen_batch", "--prompt_len", "--new_tokens"))]
    assert aot.main(["aot", *flags, f"--config.compute_dtype={compute_dtype}", "--program=train"]) == 0
    assert ("tpu_custom_call" in lowered[0][0].as_text()) == kernels
