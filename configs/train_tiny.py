"""A tiny Video-LLaVA trained from scratch in seconds: tests and smoke runs of the trainer."""

import ml_collections

from configs import tiny_random
from vllava_jax.modeling.lora import DEFAULT_TARGETS


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = tiny_random.get_config().model
    config.init_checkpoint = ""  # a converted checkpoint dir; empty = random init from `model`
    config.seed = 0
    config.stage = "stage2"  # stage1: projector only; stage2: projector + LLM; lora: adapters; towers always frozen
    # with stage "lora" (README "LoRA fine-tuning"); projector_learning_rate None: learning_rate
    config.lora = ml_collections.ConfigDict(dict(
        rank=8, alpha=16.0, dropout=0.05, targets=list(DEFAULT_TARGETS), use_rslora=False, train_projector=False,
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
                                                 template="vicuna_v1", pack=False, num_workers=0))
    return config
