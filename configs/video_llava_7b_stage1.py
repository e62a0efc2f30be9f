"""Video-LLaVA-7B stage 1 (alignment): only the projector trains; towers and LLM are frozen.

The paper's recipe: LAION-CC-SBU 558K image captions + Valley 702K video captions, `plain`
template, lr 1e-3, global batch 256, 1 epoch, warmup ratio 0.03, cosine decay, no weight decay,
max length 3072 tokens after visual tokens are expanded (the original's
`--tokenizer_model_max_length 3072`; its `--model_max_length 2048` bounds the text before expansion).
Start from separately converted towers + Vicuna (`init_checkpoint`).
"""

import ml_collections

from configs import train_defaults, video_llava_7b
from vllava_jax.train.partition import preset


def get_config() -> ml_collections.ConfigDict:
    config = train_defaults.get_config()
    config.model = video_llava_7b.get_config().model  # the architecture; weights come from init_checkpoint
    config.init_checkpoint = ""  # python -m vllava_jax.convert output (towers + Vicuna-7B + a fresh projector)
    config.trainable = preset("stage1")
    config.compute_dtype = "bfloat16"
    config.remat = True
    config.learning_rate = 1e-3
    config.weight_decay = 0.0
    config.max_length = 3072  # one 8-frame video (2,056 tokens) + its text; 2048 skipped every video sample
    config.batch_size = 32  # rows per process per microbatch: 8 hosts x 32 = 256
    config.global_batch_size = 256  # the paper's rows per step; `python -m vllava_jax.train.aot` plans with it
    config.accum_steps = 1
    config.total_steps = (558_128 + 702_000) // 256  # one epoch
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, num_devices=0))
    config.checkpoint_every = 500
    config.log_every = 10
    config.data.kind = "annotations"
    config.data.template = "plain"
    config.data.annotations = ["llava_image/chat.json", "valley/chat.json"]
    config.data.media_roots = ["llava_image", "valley"]
    config.data.weights = [558_128, 702_000]
    config.data.num_workers = 16
    return config
