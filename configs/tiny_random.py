"""A tiny random Video-LLaVA for the quickstart and smoke tests: seconds on a laptop CPU."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = dict(
        model_type="video_llava",
        image_token_index=254,
        video_token_index=255,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           image_size=32, patch_size=8),
        text_config=dict(model_type="llama", vocab_size=256, hidden_size=128, intermediate_size=256,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512),
    )
    config.num_frames = 8
    return config
