"""The demo's tiny Video-LLaVA on the synthetic shapes world (data_pipelines/shapes/): both stages
train on 2 CPU cores in minutes.

`get_config("stage1")` trains the projector on captions (`plain`, towers and LLM frozen);
`get_config("stage2")` trains on QA (`vicuna_v1`, the original's `--version v1`) training every parameter: projector, LLM *and towers*.
Unlike the paper (pretrained LanguageBind towers, frozen), our towers are random: frozen, they
would hand the LLM features that say nothing about direction or color, so this toy config lets
stage 2 tune them (the frozen-tower run: docs/demo_history.md). Usable with
the trainer CLI as `--config configs/shapes_tiny.py:stage2` once `init_checkpoint` and
`data.annotations`/`data.media_roots` are set (the demo sets them).
"""

import ml_collections

from vllava_jax.train.partition import preset

SP_VOCAB_SIZE = 500  # sentencepiece pieces; <image>, <video>, <pad> follow (data_pipelines/shapes/tokenizer.py)


def model_config() -> dict:
    """A transformers config.json dict: 32 px frames in 8 px patches (16 image tokens, 8 x 17 per video)."""
    return dict(
        model_type="video_llava",
        image_token_index=SP_VOCAB_SIZE,
        video_token_index=SP_VOCAB_SIZE + 1,
        pad_token_id=SP_VOCAB_SIZE + 2,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=SP_VOCAB_SIZE + 4, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
                         max_position_embeddings=512, pad_token_id=SP_VOCAB_SIZE + 2),
    )


STAGES = {
    # stage: (trainable parameter-path regexes, template, steps, peak learning rate)
    "stage1": (preset("stage1"), "plain", 60, 2e-3),
    "stage2": (preset("full"), "vicuna_v1", 1500, 1e-3),  # the towers too
}

# Stage 2's mix of (video, image) QA. Direction is learned early; binding a color to the asked
# shape is what takes the steps, so images get the larger share (docs/demo_history.md).
STAGE2_MIX = (0.3, 0.7)


def get_config(stage: str = "stage2") -> ml_collections.ConfigDict:
    if stage not in STAGES:
        raise ValueError(f"shapes_tiny stage {stage!r} is not one of {sorted(STAGES)}")
    trained, template, steps, learning_rate = STAGES[stage]
    config = ml_collections.ConfigDict()
    config.model = model_config()
    config.init_checkpoint = ""  # the demo's random-init (stage 1) or stage-1 export (stage 2)
    config.seed = 0
    config.trainable = trained
    config.param_dtype = "float32"
    config.compute_dtype = "float32"
    config.remat = False
    config.learning_rate = learning_rate
    config.warmup_ratio = 0.05
    config.weight_decay = 0.0
    config.max_grad_norm = 1.0
    config.total_steps = steps
    config.accum_steps = 1
    config.batch_size = 16
    config.max_length = 256
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=0))
    config.checkpoint_every = steps  # the final step only: the demo exports it
    config.checkpoint_keep = 1
    config.log_every = 1
    config.peak_flops_per_device = 0.0
    config.data = ml_collections.ConfigDict(dict(kind="annotations", annotations=(), media_roots=(), tfds_dirs=(), weights=(),
                                                 template=template, pack=False, num_workers=0, tokenizer="",
                                                 images_per_row=1, videos_per_row=1))
    return config
