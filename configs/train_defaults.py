"""The trainer's settings and their defaults, no model: every training config starts here.

`python -m vllava_jax.train` reads these keys (README "Training"); a config sets `model` (a
config.json dict) or `init_checkpoint`, and `trainable`, the parameter-path regexes that train
(`vllava_jax.train.partition.preset` names the recipe's stages).
"""

import ml_collections

from vllava_jax.modeling.lora import DEFAULT_TARGETS
from vllava_jax.train.partition import preset


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict()  # a config.json dict; unused with `init_checkpoint`
    config.init_checkpoint = ""  # a converted checkpoint dir; empty = random init from `model`
    config.seed = 0
    config.trainable = preset("stage2")  # stage1: projector; stage2: projector + LLM; lora: adapters (+ PROJECTOR)
    # the adapters of a run training them (README "LoRA fine-tuning"); projector_learning_rate None: learning_rate
    config.lora = ml_collections.ConfigDict(dict(
        rank=8, alpha=16.0, dropout=0.05, targets=list(DEFAULT_TARGETS), use_rslora=False,
        projector_learning_rate=ml_collections.FieldReference(None, field_type=float)))
    config.param_dtype = "float32"  # master weights
    config.compute_dtype = "float32"
    config.remat = False
    config.learning_rate = 1e-3
    config.warmup_ratio = 0.03
    config.weight_decay = 0.0
    config.max_grad_norm = 1.0
    config.total_steps = 20
    config.accum_steps = 1
    config.batch_size = 8  # rows per microbatch read by each process; global = batch_size x processes
    config.max_length = 256
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, num_devices=0))
    config.max_replicated_fraction = 0.02  # refuse a mesh that leaves more parameter bytes unsplit (sharding.py)
    config.checkpoint_every = 5
    config.checkpoint_keep = 3
    config.log_every = 1
    config.peak_flops_per_device = 0.0  # 0: from the device-kind table (none on CPUs)
    config.data = ml_collections.ConfigDict(dict(kind="synthetic", annotations=(), media_roots=(), tfds_dirs=(), weights=(),
                                                 template="vicuna_v1", pack=False, num_workers=0,
                                                 images_per_row=1, videos_per_row=1))
    return config
