"""Video-LLaVA-7B stage 2 (instruction tuning): projector and LLM train; towers stay frozen.

The paper's recipe: LLaVA-1.5 665K image instructions + Video-ChatGPT 100K video instructions,
`vicuna_v1` template (the original's `--version v1`), lr 2e-5, global batch 128, 1 epoch, warmup ratio 0.03, cosine decay, no
weight decay, max length 3072 (see stage 1). `init_checkpoint` is stage 1's exported result.
"""

import ml_collections

from configs import video_llava_7b_stage1
from vllava_jax.train.partition import preset


def get_config() -> ml_collections.ConfigDict:
    config = video_llava_7b_stage1.get_config()
    config.trainable = preset("stage2")
    config.learning_rate = 2e-5
    config.batch_size = 16  # rows per process per microbatch: 8 hosts x 16 = 128
    config.global_batch_size = 128
    config.total_steps = (665_000 + 100_000) // 128
    config.data.template = "vicuna_v1"  # LLaVA's conv_templates["v1"]
    config.data.annotations = ["llava_image_tune/llava_v1_5_mix665k.json", "videochatgpt_tune/videochatgpt_llavaimage_tune.json"]
    config.data.media_roots = ["llava_image_tune", "videochatgpt_tune"]
    config.data.weights = [665_000, 100_000]
    return config
