"""LoRA training: only adapters (and the projector, if asked) change; the bfloat16 base stays bit-exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import vllava_jax
from configs import train_tiny
from vllava_jax.checkpoint import peft
from vllava_jax.errors import ConfigError
from vllava_jax.modeling import lora
from vllava_jax.train.export import export_adapter, trained_model
from vllava_jax.train import adapters, partition
from vllava_jax.train.build import build_model, build_model_config, policy_from_config
from vllava_jax.train.loop import train
from vllava_jax.train.synthetic import SyntheticBatches


def lora_run_config(train_projector: bool, **lora_overrides):
    config = train_tiny.get_config()
    config.max_length = 48
    config.total_steps = 2
    config.checkpoint_every = 2
    config.trainable = partition.preset("lora") + ((partition.PROJECTOR,) if train_projector else ())
    config.param_dtype = "bfloat16"
    config.compute_dtype = "float32"
    config.learning_rate = 1e-2
    config.lora = ml_collections.ConfigDict(dict(rank=4, alpha=8.0, dropout=0.1, targets=list(lora.DEFAULT_TARGETS),
                                                 use_rslora=False,
                                                 projector_learning_rate=1e-3, **lora_overrides))
    return config


def flat(state) -> dict[str, np.ndarray]:
    return {"/".join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(state)}


def test_lora_trains_only_adapters_and_projector_and_keeps_the_base_bit_exact(tmp_path):
    train_projector = True
    config = lora_run_config(train_projector)
    model_config = build_model_config(config)
    base = flat(vllava_jax.VideoLlava.random(model_config, dtype="bfloat16", seed=config.seed).state)
    result = train(config, tmp_path, SyntheticBatches(model_config, rows=8, length=48))
    after = flat(nnx.state(nnx.merge(result.graphdef, result.state.params, result.frozen), nnx.Param))
    adapter_names = {n for n in after if n.endswith(("/adapter/a", "/adapter/b"))}
    # q/k/v/o + gate/up/down, each an a and a b
    assert len(adapter_names) == 14 and all(n.startswith("language_model/layers/") for n in adapter_names)
    assert set(after) - adapter_names == set(base)
    for name in adapter_names:
        assert after[name].dtype == np.float32
        if name.endswith("/b"):  # b starts at zero: any change is training
            assert np.abs(after[name]).max() > 0, f"{name} did not train"
    for name, value in base.items():
        if train_projector and name.startswith("projector/"):
            assert after[name].dtype == np.float32
            assert not np.array_equal(after[name], value.astype(np.float32)), f"{name} did not train"
        else:
            assert after[name].dtype == value.dtype == jnp.bfloat16, name
            assert np.array_equal(after[name].view(np.uint16), value.view(np.uint16)), f"{name} changed"
    trained = set(flat(result.state.params))
    expected = adapter_names | ({n for n in base if n.startswith("projector/")} if train_projector else set())
    assert trained == expected
    # optimizer moments exist only for the trained parameters: two per parameter, plus scalar counts
    moment_sizes = sorted(x.size for x in jax.tree.leaves(result.state.opt_state) if x.ndim)
    assert moment_sizes == sorted(2 * [after[n].size for n in trained])

    # exported alone in PEFT's format, loaded back onto the base: the trained model's logits
    batch = next(SyntheticBatches(model_config, rows=2, length=48))
    inputs = (batch["input_ids"], batch["attention_mask"], batch["pixel_values_images"][batch["image_valid"]])
    trained_logits = np.asarray(trained_model(config, result)(*inputs).logits)
    export_adapter(config, result, tmp_path / "adapter")
    base_model = vllava_jax.VideoLlava.random(model_config, dtype=policy_from_config(config), seed=config.seed)
    reloaded = peft.load_adapter(base_model, tmp_path / "adapter")
    np.testing.assert_array_equal(np.asarray(reloaded(*inputs).logits), trained_logits)


def test_without_train_projector_only_adapters_train():
    config = lora_run_config(train_projector=False)
    model = build_model(config, mesh=None)
    _, trainable, _ = partition.split_trainable(model.module, partition.trainable_patterns(config))
    names = set(flat(trainable))
    assert len(names) == 14 and all(n.endswith(("/adapter/a", "/adapter/b")) for n in names)
    assert adapters.group_learning_rates(config) == {}
    assert adapters.group_learning_rates(lora_run_config(train_projector=True)) == {partition.PROJECTOR: 1e-3}


def test_adapter_dropout_is_on_only_inside_the_train_step():
    config = lora.LoraConfig(rank=2, alpha=4.0, dropout=0.5)
    model = vllava_jax.VideoLlava.random(build_model_config(lora_run_config(False)), seed=0)
    module = model.module
    lora.attach(module, config, model.policy)
    dense = module.language_model.layers.attn.q
    adapter = nnx.merge(*nnx.split(dense.adapter))
    adapter.b.set_value(jnp.ones_like(adapter.b[...]))
    layer = jax.tree.map(lambda x: x[0], nnx.state(adapter))
    one = nnx.merge(nnx.graphdef(adapter), layer)
    x = jnp.ones((3, 5, dense.kernel.shape[1]))
    plain = one(x)
    dropped = lora.dropout_at(jnp.int32(7), one)(x)
    again = lora.dropout_at(jnp.int32(7), one)(x)
    other_step = lora.dropout_at(jnp.int32(8), one)(x)
    assert np.array_equal(one(x), plain)  # no dropout outside a step
    assert not np.allclose(dropped, plain) and np.array_equal(dropped, again)
    assert not np.array_equal(dropped, other_step)


@pytest.mark.parametrize("settings, message", [
    (dict(rank=0), "config.lora.rank must be at least 1"),
    (dict(rank=4, dropout=1.0), r"config.lora.dropout must be in \[0, 1\)"),
    (dict(rank=4, targets=["attn/(q"]), r"config.lora.targets: 'attn/\(q' is not a regex"),
    (dict(rank=4, alpah=8.0), r"config.lora: unknown key\(s\) \['alpah'\]"),
])
def test_bad_lora_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        lora.LoraConfig.from_config(ml_collections.ConfigDict(settings))


def test_targets_that_match_nothing_are_refused():
    model = vllava_jax.VideoLlava.random(build_model_config(lora_run_config(False)), seed=0)
    with pytest.raises(ConfigError, match=r"LoRA targets \['attn/qq'\] match no dense layer"):
        lora.attach(model.module, lora.LoraConfig(targets=("attn/qq",)), model.policy)
