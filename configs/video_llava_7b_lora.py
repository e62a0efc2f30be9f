"""Video-LLaVA-7B stage 2 with LoRA: adapters on the LLM, the projector at its own rate; fits one 48 GB GPU.

The original's `scripts/v1_5/finetune_lora.sh`: `--lora_enable --lora_r 128 --lora_alpha 256
--mm_projector_lr 2e-5`, lr 2e-4, 16 rows per GPU x 8 GPUs (global batch 128), 1 epoch, warmup
ratio 0.03, cosine, no weight decay, bf16, gradient checkpointing; its `train.py` defaults
`lora_dropout` 0.05 and targets every Linear of the LLM but the LM head (q/k/v/o, gate/up/down).
The base stays frozen in bfloat16 (14 GB for 7B); adapters (and the projector) train in float32.
Rows are 3,072 tokens (the original's `tokenizer_model_max_length`): one 8-frame video alone is
2,056. Here one device takes 2 rows x 64 accumulation steps = 128 (small microbatches keep a 7B
step near 25 GiB, README "LoRA fine-tuning"); on N devices divide `accum_steps` by N.
`init_checkpoint` is stage 1's exported result.
"""

import ml_collections

from configs import video_llava_7b_stage2
from vllava_jax.modeling.lora import DEFAULT_TARGETS
from vllava_jax.train.partition import PROJECTOR, preset


def get_config() -> ml_collections.ConfigDict:
    config = video_llava_7b_stage2.get_config()
    config.trainable = preset("lora") + (PROJECTOR,)  # the adapters, and the projector at its own rate
    config.param_dtype = "bfloat16"  # the frozen base; adapters and the trained projector are float32
    config.compute_dtype = "bfloat16"
    del config["remat"]  # a bool in the stage configs; a policy name here
    config.remat = "full"  # keep only each layer's input: "dots" would keep ~2 GB per layer at 8 x 3,072
    config.learning_rate = 2e-4
    config.max_length = 3072
    config.batch_size = 2
    config.accum_steps = 64
    config.lora.update(rank=128, alpha=256.0, dropout=0.05, targets=list(DEFAULT_TARGETS), use_rslora=False,
                       projector_learning_rate=2e-5)
    return config
