"""Fixtures written by the tests themselves: a small sentencepiece tokenizer checkpoint and encoded clips."""

from __future__ import annotations

import io
import json
import shutil
from fractions import Fraction

import av
import numpy as np

CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is happening in this video? ASSISTANT: A man plays the guitar on a stage.",
    "Describe the image in detail. There are 3 cats and 12 dogs in the park, 2024-05-17.",
    "Why is the sky blue? Because of Rayleigh scattering of sunlight in the atmosphere.",
    "Is the person in the video happy or sad? The woman smiles while she cooks dinner.",
]


def train_sentencepiece(model_type: str = "bpe", vocab_size: int = 420) -> bytes:
    """A LLaMA-like sentencepiece model: byte fallback, split digits, no normalization, dummy prefix."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buf, vocab_size=vocab_size, model_type=model_type,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        character_coverage=1.0, minloglevel=2)
    return buf.getvalue()


def save_tokenizer_checkpoint(path, legacy: bool = False, image_size: int = 224, strategy: str = "default",
                              vocab_size: int = 420):
    """A checkpoint dir like Video-LLaVA-7B-hf's, tiny: tokenizer.model + the transformers tokenizer files
    (`<image>`, `<video>`, `<pad>` added as special tokens, BOS on), preprocessor_config.json, config.json.

    Returns transformers' tokenizer loaded back from the dir, and its image processor (the oracle).
    """
    from transformers import AutoTokenizer, LlamaTokenizer, VideoLlavaImageProcessor

    import vllava_jax

    path.mkdir(parents=True, exist_ok=True)
    src = path / "_sp"
    src.mkdir()
    (src / "tokenizer.model").write_bytes(train_sentencepiece(vocab_size=vocab_size))
    tok = LlamaTokenizer.from_pretrained(src, legacy=legacy, add_bos_token=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<video>"], "pad_token": "<pad>"})
    tok.save_pretrained(path)
    shutil.move(src / "tokenizer.model", path / "tokenizer.model")
    src.rmdir()
    # transformers 5 does not write `legacy`; checkpoints from 4.x record it, and loading honours it
    tok_config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config | {"legacy": legacy}, indent=2))
    tok = AutoTokenizer.from_pretrained(path)
    image_processor = VideoLlavaImageProcessor(size={"shortest_edge": image_size},
                                               crop_size={"height": image_size, "width": image_size})
    image_processor.save_pretrained(path)
    config = vllava_jax.VideoLlavaConfig(
        vision_config=vllava_jax.VisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                                              num_attention_heads=4, image_size=image_size),
        text_config=vllava_jax.TextConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=72,
                                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                          head_dim=12),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy=strategy, pad_token_id=tok.pad_token_id)
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2))
    return tok, image_processor


def frame_pattern(index: int, height: int, width: int) -> np.ndarray:
    """A frame whose index can be read back after lossy coding: a gray level per index plus moving texture."""
    y, x = np.mgrid[0:height, 0:width]
    base = (index * 37) % 200 + 20
    texture = ((x + 3 * index) // 8 + y // 8) % 2 * 30
    return np.repeat((base + texture).astype(np.uint8)[..., None], 3, axis=-1)


def write_clip(path, num_frames: int, width: int = 64, height: int = 48, fps: int = 24, codec: str = "libx264",
               gop: int = 12, bframes: bool = True, vfr: bool = False, audio: bool = False,
               nonref_bframes: bool = False, display: tuple[int, bool, bool] | None = None) -> None:
    """Encode `num_frames` of `frame_pattern` with PyAV; `vfr` gives frames irregular durations;
    `nonref_bframes` makes x264 put two non-reference B-frames between references (left to itself, at
    preset fast on this pattern, it writes no B-frames at all); `display` = (counterclockwise
    degrees, hflip, vflip) writes a display matrix, as phones do."""
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "libx264":
            stream.options = {"g": str(gop), "bf": "2" if bframes else "0", "preset": "ultrafast" if not bframes else "fast"}
            if nonref_bframes:
                stream.options |= {"preset": "ultrafast", "x264-params": "b-adapt=0:b-pyramid=none"}
        elif codec != "gif":
            stream.options = {"g": str(gop)}
        if vfr:
            stream.codec_context.time_base = Fraction(1, 1000)
        if display is not None:
            stream.set_display_rotation(*display)
        audio_stream = out.add_stream("aac", rate=16000) if audio else None
        t = 0
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            if vfr:
                frame.pts, frame.time_base = t, Fraction(1, 1000)
                t += 20 + (i % 3) * 30
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
        if audio_stream is not None:
            _write_tone(out, audio_stream, seconds=num_frames / fps)


def _write_tone(out, stream, seconds: float) -> None:
    rate = stream.rate
    samples = np.sin(np.arange(int(rate * seconds)) / rate * 2 * np.pi * 440).astype(np.float32)
    for start in range(0, len(samples), 1024):
        chunk = samples[start:start + 1024]
        frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
        frame.rate = rate
        out.mux(stream.encode(frame))
    out.mux(stream.encode())


def write_audio_only(path, seconds: float = 0.5) -> None:
    with av.open(str(path), mode="w") as out:
        _write_tone(out, out.add_stream("aac", rate=16000), seconds)


def read_all_frames(path) -> list[np.ndarray]:
    """The reference recipe's decoding: every frame, in order, as rgb24."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
