"""`train.flops.step_flops` against XLA's own count of the trainer's compiled step (CPU, abstract inputs).

The config has one layer per stack and one microbatch of one row: XLA's `cost_analysis()` counts
a loop body once, so every loop here (the scanned layers, `answer_loss`'s row map) runs once.
What still differs, term by term (the second assertion holds the sum to 1% of the matmul FLOPs
`train.hlo_stats` reads from the same compiled program):

- attention: XLA multiplies the whole L x L score matrix (masked, not skipped) forward and
  backward; `step_flops` counts the causal half a token sees, the model FLOPs convention;
- LM head: `answer_loss` is a `cond` whose costlier branch (every position, in chunks of
  positions over every row, its logits recomputed for the backward) is what a static count sees;
  `step_flops` counts the labelled positions the taken branch computes;
- elementwise work (norms, softmax, activations, the AdamW update), which XLA counts and model
  FLOPs do not: the gap between `cost_analysis()` and the matmul FLOPs.
"""

from __future__ import annotations

import jax
import ml_collections
import pytest

from configs import train_tiny
from vllava_jax.config import VideoLlavaConfig
from vllava_jax.sharding import make_mesh
from vllava_jax.train import flops, hlo_stats, partition, programs
from vllava_jax.train.step import labelled_head_rows

LENGTH = 160  # the 8 x 17 video and 16 image tokens fit


def one_layer_config(stage: str) -> tuple[ml_collections.ConfigDict, VideoLlavaConfig]:
    config = train_tiny.get_config()
    model = config.model.to_dict()
    model.update(image_token_index=62, video_token_index=63, vision_feature_layer=-1)
    model["vision_config"].update(hidden_size=128, intermediate_size=512, num_hidden_layers=1)
    model["text_config"].update(vocab_size=64, hidden_size=512, intermediate_size=4096, num_hidden_layers=1,
                                num_key_value_heads=4)
    config.model = ml_collections.ConfigDict(model)
    config.trainable = partition.preset(stage)
    config.max_length = LENGTH
    return config, VideoLlavaConfig.from_hf_dict(model)


@pytest.mark.parametrize("stage", ["stage1", "stage2", "full"])
def test_step_flops_match_xla_cost_analysis(stage):
    config, model_config = one_layer_config(stage)
    lowered, _ = programs.lower_train_step(config, model_config, make_mesh(devices=jax.devices()[:1]), 1, 1)
    compiled = lowered.compile()
    cost = compiled.cost_analysis()
    xla = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
    labelled = labelled_head_rows(LENGTH)  # the positions the fast branch runs the LM head on
    ours = flops.step_flops(model_config, config.trainable, 1, LENGTH, model_config.video_tower_config.num_frames,
                            head_tokens=labelled, images=1)
    assert abs(xla / ours - 1) < 0.05, (xla, ours)

    text = model_config.text_config
    heads_dim = text.num_attention_heads * text.head_dim
    full_minus_causal_attention = 3 * 2 * LENGTH ** 2 * heads_dim  # forward + two backward passes of 2 S^2 d
    llm_trains = stage != "stage1"
    head = 2 * text.hidden_size * text.vocab_size
    every_position_head = (3 + llm_trains) * head * LENGTH  # forward, recomputed forward, input (+ weight) grads
    labelled_head = (2 + llm_trains) * head * labelled
    explained = ours + full_minus_causal_attention + every_position_head - labelled_head
    matmuls = hlo_stats.Program(compiled.as_text()).cost().flops
    assert abs(matmuls / explained - 1) < 0.01, (matmuls, explained)
