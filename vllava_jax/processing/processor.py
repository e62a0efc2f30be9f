"""`Processor`: prompts, images and videos -> the numpy inputs transformers' `VideoLlavaProcessor` returns.

Each `<image>` in the text becomes `config.image_seq_length` image tokens and each `<video>`
`config.video_seq_length(T)` video tokens, counted from the checkpoint's config.json (never
hard-coded); the pixel sizes come from `preprocessor_config.json` when the checkpoint has one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from etils import epath
from PIL import Image

from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import ConfigError, InputError
from vllava_jax.processing import image as image_lib
from vllava_jax.processing import video as video_lib
from vllava_jax.processing.tokenizer import Tokenizer

IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"


class Processor:
    def __init__(self, tokenizer: Tokenizer, config: VideoLlavaConfig, size: int = 224, crop_size: int = 224,
                 mean=image_lib.OPENAI_CLIP_MEAN, std=image_lib.OPENAI_CLIP_STD, resample: int = Image.BICUBIC,
                 video_transform: str = "hf", num_frames: int = 8, pad_to_square: bool = False,
                 flip_videos: bool = False, source: str = "processor"):
        if video_transform not in video_lib.VIDEO_TRANSFORMS:
            raise ConfigError(f"video_transform {video_transform!r} is not one of {video_lib.VIDEO_TRANSFORMS}")
        for name, tower in (("vision_config", config.vision_config), ("video tower", config.video_tower_config)):
            if tower.image_size != crop_size:
                raise ConfigError(f"{source}: crop size {crop_size} differs from the {name}'s image_size "
                                  f"{tower.image_size}; the token counts would not fit the pixels")
        self.tokenizer, self.config = tokenizer, config
        self.size, self.crop_size, self.mean, self.std, self.resample = size, crop_size, mean, std, resample
        self.video_transform, self.num_frames = video_transform, num_frames
        self.pad_to_square, self.flip_videos = pad_to_square, flip_videos
        self.image_token_id = tokenizer.token_id(IMAGE_TOKEN)
        self.video_token_id = tokenizer.token_id(VIDEO_TOKEN)
        for name, tid, cid in (("image", self.image_token_id, config.image_token_index),
                               ("video", self.video_token_id, config.video_token_index)):
            if tid != cid:
                raise ConfigError(f"{source}: the tokenizer gives <{name}> id {tid}, config.json's "
                                  f"{name}_token_index is {cid}")

    @classmethod
    def from_pretrained(cls, path: epath.PathLike, video_transform: str | None = None, **kwargs) -> Processor:
        """A transformers-format checkpoint dir (or one our converter wrote).

        `video_transform` defaults to "original" for a checkpoint with the original LanguageBind
        video tower (`video_vision_config.add_time_attn`), else "hf".
        """
        path = epath.Path(path)
        config = VideoLlavaConfig.from_json(path / "config.json")
        pre_file = path / "preprocessor_config.json"
        pre = json.loads(pre_file.read_text()) if pre_file.exists() else {}
        image_size = config.vision_config.image_size
        size = pre.get("size", {}).get("shortest_edge", image_size)
        crop = pre.get("crop_size", {"height": image_size, "width": image_size})
        if not isinstance(size, int) or crop.get("height") != crop.get("width"):
            raise ConfigError(f"{pre_file}: size {pre.get('size')} / crop_size {crop} is not a shortest-edge "
                              "resize with a square crop")
        if video_transform is None:
            video_transform = "original" if config.video_tower_config.add_time_attn else "hf"
        kwargs = dict(size=size, crop_size=crop["height"], mean=tuple(pre.get("image_mean", image_lib.OPENAI_CLIP_MEAN)),
                      std=tuple(pre.get("image_std", image_lib.OPENAI_CLIP_STD)),
                      resample=pre.get("resample", Image.BICUBIC), num_frames=config.video_tower_config.num_frames,
                      video_transform=video_transform, source=str(path)) | kwargs
        placeholders = {IMAGE_TOKEN: config.image_token_index, VIDEO_TOKEN: config.video_token_index}
        return cls(Tokenizer.from_pretrained(path, placeholders), config, **kwargs)

    # ---- pixels ----

    def preprocess_image(self, image) -> np.ndarray:
        """(3, crop, crop) float32 for one image: path, PIL image or (H, W, C) uint8 array."""
        return image_lib.clip_transform(image, self.size, self.crop_size, self.mean, self.std, self.pad_to_square,
                                        self.resample)

    def preprocess_video(self, video) -> np.ndarray:
        """(T, 3, crop, crop) float32 for one video: a file path or (T, H, W, 3) uint8 frames."""
        if isinstance(video, np.ndarray):
            if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
                raise InputError(f"video array has shape {video.shape} dtype {video.dtype}; expected (T, H, W, 3) uint8")
            frames = video
        else:
            frames = video_lib.read_frames(video, self.num_frames)
        if self.video_transform == "original":
            return video_lib.transform_original(frames, self.crop_size, self.mean, self.std, self.flip_videos)
        return video_lib.transform_hf(frames, self.size, self.crop_size, self.mean, self.std)

    # ---- the call ----

    def __call__(self, text: str | Sequence[str] | None = None, images=None, videos=None, padding: bool | str = False,
                 max_length: int | None = None, padding_side: str | None = None) -> dict[str, np.ndarray]:
        """Numpy `input_ids`, `attention_mask`, and `pixel_values_images`/`pixel_values_videos` when given.

        Placeholders are matched to images/videos in order, across the whole batch.
        """
        out: dict[str, np.ndarray] = {}
        images = _as_list(images)
        videos = _as_list(videos)
        if images:
            out["pixel_values_images"] = np.stack([self.preprocess_image(im) for im in images])
        if videos:
            out["pixel_values_videos"] = np.stack([self.preprocess_video(v) for v in videos])
        if text is None:
            return out
        texts = [text] if isinstance(text, str) else list(text)
        n_img = sum(t.count(IMAGE_TOKEN) for t in texts)
        n_vid = sum(t.count(VIDEO_TOKEN) for t in texts)
        if n_img != len(images) or n_vid != len(videos):
            raise InputError(f"the text has {n_img} {IMAGE_TOKEN} and {n_vid} {VIDEO_TOKEN} placeholders, but "
                             f"{len(images)} images and {len(videos)} videos were given")
        frames = out["pixel_values_videos"].shape[1] if videos else 0
        return self.tokenize(texts, frames, padding=padding, max_length=max_length, padding_side=padding_side) | out

    def tokenize(self, texts: Sequence[str], frames: int, padding: bool | str = False, max_length: int | None = None,
                 padding_side: str | None = None) -> dict[str, np.ndarray]:
        """`input_ids` and `attention_mask` with each placeholder expanded to its feature count (videos of
        `frames` frames), without media: for prompts whose features are already computed (`vllava_jax.features`)."""
        expanded = [t.replace(IMAGE_TOKEN, IMAGE_TOKEN * self.config.image_seq_length)
                    .replace(VIDEO_TOKEN, VIDEO_TOKEN * self.config.video_seq_length(frames)) for t in texts]
        return self.tokenizer(expanded, padding=padding, max_length=max_length, padding_side=padding_side)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens)


def _as_list(items) -> list:
    if items is None:
        return []
    if isinstance(items, (list, tuple)):
        return list(items)
    return [items]
