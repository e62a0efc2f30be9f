"""Pixels against transformers' `VideoLlavaImageProcessor`; the whole Processor against `VideoLlavaProcessor`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import vllava_jax
from tests import media
from vllava_jax.errors import InputError
from vllava_jax.processing import image as image_lib
from vllava_jax.processing import video as video_lib

SIZES = [(224, 224), (480, 360), (360, 480), (333, 517), (1000, 90), (31, 250), (225, 224), (100, 100)]


def _hf_pixels(processor, images):
    out = processor(images=images, return_tensors="np")
    return out["pixel_values_images" if "pixel_values_images" in out else "pixel_values"]


@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_pixels_match_transformers(hw):
    from transformers import VideoLlavaImageProcessor

    rng = np.random.default_rng(hw[0] * 7 + hw[1])
    array = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    want = _hf_pixels(VideoLlavaImageProcessor(), [array])[0]
    for source in (array, Image.fromarray(array)):
        got = image_lib.clip_transform(source)
        assert got.shape == want.shape == (3, 224, 224)
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "LA", "CMYK"])
def test_modes_match_transformers(mode):
    from transformers import VideoLlavaImageProcessor

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (300, 260, 4), dtype=np.uint8), mode="RGBA").convert(mode)
    want = _hf_pixels(VideoLlavaImageProcessor(), [image])[0]
    np.testing.assert_allclose(image_lib.clip_transform(image), want, atol=1e-5, rtol=0)


def test_image_file_and_pad_to_square(tmp_path):
    rng = np.random.default_rng(2)
    array = rng.integers(0, 256, (120, 300, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "x.png")
    np.testing.assert_array_equal(image_lib.clip_transform(tmp_path / "x.png"), image_lib.clip_transform(array))
    square = image_lib.expand_to_square(Image.fromarray(array))
    assert square.size == (300, 300)
    pixels = np.asarray(square)
    mean_color = [int(m * 255) for m in image_lib.OPENAI_CLIP_MEAN]
    assert (pixels[:90] == mean_color).all() and (pixels[210:] == mean_color).all()
    np.testing.assert_array_equal(pixels[90:210], array)


def test_bad_images_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="missing.png: no such image file"):
        image_lib.clip_transform(tmp_path / "missing.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="bad.png: not a readable image"):
        image_lib.clip_transform(tmp_path / "bad.png")
    with pytest.raises(InputError, match=r"\(3, 50, 50\)"):
        image_lib.clip_transform(np.zeros((3, 50, 50), np.uint8))


class _FramesAsImages:
    """transformers' video processor needs torchvision; its transform is the image transform per frame."""

    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, videos=None, **kwargs):
        return {"pixel_values_videos": np.stack([_hf_pixels(self.image_processor, list(v)) for v in videos])}


@pytest.fixture(scope="module")
def hf_processor_and_dir(tmp_path_factory):
    from transformers import VideoLlavaProcessor
    from transformers.processing_utils import ProcessorMixin

    path = tmp_path_factory.mktemp("proc")
    tok, image_processor = media.save_tokenizer_checkpoint(path)
    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda *args: None  # accept the stand-in video processor
    try:
        proc = VideoLlavaProcessor(image_processor=image_processor, video_processor=_FramesAsImages(image_processor),
                                   tokenizer=tok, patch_size=14, vision_feature_select_strategy="default")
    finally:
        ProcessorMixin.check_argument_for_proper_class = check
    return proc, path


def test_processor_matches_transformers(hf_processor_and_dir):
    hf, path = hf_processor_and_dir
    ours = vllava_jax.Processor.from_pretrained(path)
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, hw + (3,), dtype=np.uint8) for hw in [(240, 320), (500, 280)]]
    videos = [rng.integers(0, 256, (8, 90, 160, 3), dtype=np.uint8)]
    texts = ["USER: <image>\nWhat is this? ASSISTANT:",
             "USER: <video>\nWhat happens? ASSISTANT: Nothing.</s>USER: <image>\nAnd here? ASSISTANT:"]
    want = hf(text=texts, images=images, videos=videos, padding=True, return_tensors="np")
    got = ours(text=texts, images=images, videos=videos, padding=True)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])
    image_key = "pixel_values_images" if "pixel_values_images" in want else "pixel_values"
    np.testing.assert_allclose(got["pixel_values_images"], want[image_key], atol=1e-5, rtol=0)
    np.testing.assert_allclose(got["pixel_values_videos"], want["pixel_values_videos"], atol=1e-5, rtol=0)
    config = ours.config
    assert (got["input_ids"][1] == config.video_token_index).sum() == config.video_seq_length(8) == 8 * 257
    assert (got["input_ids"] == config.image_token_index).sum() == 2 * config.image_seq_length == 2 * 256
    assert ours.batch_decode(got["input_ids"][:, -3:]) == hf.batch_decode(want["input_ids"][:, -3:])


def test_processor_placeholder_count_mismatch(hf_processor_and_dir):
    ours = vllava_jax.Processor.from_pretrained(hf_processor_and_dir[1])
    with pytest.raises(InputError, match="1 <image> and 0 <video> placeholders, but 2 images"):
        ours(text="<image> hi", images=[np.zeros((30, 30, 3), np.uint8)] * 2)


def _torch_original_transform(frames, size=224):
    """The original LanguageBind video transform, written with torch from its definition."""
    import torch

    mean = torch.tensor(image_lib.OPENAI_CLIP_MEAN)[:, None, None, None]
    std = torch.tensor(image_lib.OPENAI_CLIP_STD)[:, None, None, None]
    x = torch.as_tensor(frames).permute(3, 0, 1, 2).float() / 255.0  # (C, T, H, W)
    x = (x - mean) / std
    c, t, h, w = x.shape
    new_h, new_w = (size, int(np.floor(w / h * size))) if h < w else (int(np.floor(h / w * size)), size)
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    i, j = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return x[..., i:i + size, j:j + size].permute(1, 0, 2, 3).numpy()


@pytest.mark.parametrize("hw", [(360, 640), (480, 360), (240, 240), (100, 130)])
def test_original_video_transform_matches_torch(hw):
    frames = np.random.default_rng(4).integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    got = video_lib.transform_original(frames)
    want = _torch_original_transform(frames)
    assert got.shape == want.shape == (3, 3, 224, 224)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(video_lib.transform_original(frames, flip=True), got[..., ::-1])
