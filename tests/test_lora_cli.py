"""`--adapter DIR` in generate and eval: the adapter is applied, unmerged, on top of `--model`."""

from __future__ import annotations

import json

import pytest
from flax import nnx

import vllava_jax
from tests.test_eval_run import read_jsonl, write_video_set
from tests.test_generate_cli import checkpoint  # noqa: F401  (a fixture, shared rather than copied)
from tests.test_lora_peft import with_random_adapter
from vllava_jax import generate
from vllava_jax.checkpoint import peft
from vllava_jax.eval import runner
from vllava_jax.eval.__main__ import main as eval_main
from vllava_jax.eval.runner import RunConfig
from vllava_jax.errors import DataError
from vllava_jax.processing.conversation import get_template


@pytest.fixture(scope="module")
def adapted(checkpoint, tmp_path_factory):  # noqa: F811
    """(model dir, clip, adapter dir, the model with the adapter attached in memory)."""
    path, clip = checkpoint
    base = vllava_jax.load_pretrained(path)
    module = with_random_adapter(base, seed=4)
    adapter = peft.save_peft(module, base.config, tmp_path_factory.mktemp("lora") / "adapter", include_projector=True)
    return path, clip, adapter, vllava_jax.VideoLlava(base.config, base.policy, *nnx.split(module))


def test_generate_applies_the_adapter(adapted, capsys):
    path, clip, adapter, model = adapted
    args = ["--model", str(path), "--video", str(clip), "--prompt", "What happens?", "--max-new-tokens", "6"]
    generate.main(args + ["--adapter", str(adapter)])
    streamed = capsys.readouterr().out.rstrip("\n")
    processor = vllava_jax.Processor.from_pretrained(path)
    batch = processor(text=get_template("llava_v1").prompt(["What happens?"], ["<video>"]), videos=[str(clip)])
    eos = model.config.text_config.eos_token_id

    def answer(m):
        ids = m.generate(batch["input_ids"], batch["attention_mask"], pixel_values_videos=batch["pixel_values_videos"],
                         max_new_tokens=6)
        return processor.decode([int(t) for t in ids[0, batch["input_ids"].shape[1]:] if t != eos],
                                skip_special_tokens=True)

    assert streamed == answer(model)
    assert answer(model) != answer(vllava_jax.load_pretrained(path))  # the adapter changed the answer


def test_eval_applies_the_adapter_and_records_it(adapted, tmp_path):
    path, _, adapter, model = adapted
    data = write_video_set(tmp_path / "msvd", ["clipa", "clipb"])
    out = tmp_path / "out"
    eval_main(["--task", "msvd_qa", "--model", str(path), "--adapter", str(adapter), "--data", str(data),
               "--output", str(out), "--max-new-tokens", "4"])
    config = RunConfig(task="msvd_qa", model=str(path), adapter=str(adapter), data=str(data),
                       output=str(tmp_path / "in_memory"), max_new_tokens=4)
    runner.run(config, model=model, processor=vllava_jax.Processor.from_pretrained(path))
    assert ([p["pred"] for p in read_jsonl(out / "predictions.jsonl")]
            == [p["pred"] for p in read_jsonl(tmp_path / "in_memory" / "predictions.jsonl")])
    assert json.loads((out / "metrics.json").read_text())["config"]["adapter"] == str(adapter)
    with pytest.raises(DataError, match="other settings {'adapter'"):  # cached answers of the adapter are not the base's
        eval_main(["--task", "msvd_qa", "--model", str(path), "--data", str(data), "--output", str(out),
                   "--max-new-tokens", "4"])
