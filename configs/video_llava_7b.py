"""Video-LLaVA-7B as released in transformers format (LanguageBind/Video-LLaVA-7B-hf).

`get_config().model` is the architecture part of that checkpoint's config.json;
`vllava_jax.VideoLlavaConfig.from_hf_dict(get_config().model.to_dict())` builds it.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = dict(
        model_type="video_llava",
        image_token_index=32000,
        video_token_index=32001,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=256,
        video_seq_length=2056,
        tie_word_embeddings=False,
        vision_config=dict(
            model_type="clip_vision_model",
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=224,
            patch_size=14,
            projection_dim=768,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=32064,
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
        ),
    )
    return config
