"""An original Video-LLaVA checkpoint, converted to ours and exported `--to hf`, runs in transformers end to end.

The original's vocabulary has no `<image>`/`<video>` rows; the export adds them and `<pad>` as
transformers' own conversion does, so transformers' processor and model run on the exported dir
and agree with our model on the source. The main fixture has no temporal attention (its video tower
is plain CLIP, so nothing is dropped); `test_drop_temporal_export_equals_ours_without_temporal`
covers a temporal original exported with `--drop-temporal`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from flax import nnx
from safetensors.numpy import load_file
from transformers import AutoTokenizer, VideoLlavaForConditionalGeneration, VideoLlavaImageProcessor, VideoLlavaProcessor
from transformers.models.auto import video_processing_auto
from transformers.processing_utils import ProcessorMixin
from transformers.utils import is_torchvision_available

import vllava_jax
from tests import media, oracle
from tests.cli_run import assert_user_error, in_process
from tests.test_convert_original import write_original, write_temporal_original
from tests.test_temporal import FRAMES
from vllava_jax import convert
from vllava_jax.checkpoint import write as write_lib
from vllava_jax.modeling.video_llava import VideoLlavaModel

VOCAB = 320  # the smallest byte-fallback sentencepiece model over media.CORPUS
GROWN = 384  # VOCAB + <image>, <video>, <pad>, rounded up to a multiple of 64 as transformers' conversion does
IMAGE_ID, VIDEO_ID, PAD_ID = VOCAB, VOCAB + 1, VOCAB + 2


def run(*args) -> int:
    return convert.main([str(a) for a in args])


def write_original_tokenizer(path, transformers_saved: bool = False) -> None:
    """The tokenizer files the original Video-LLaVA-7B ships: LLaMA's, no <image>/<video>/<pad>, pad = <unk>.

    `transformers_saved`: as transformers' `save_pretrained` rewrites them (tokenizer.json included).
    """
    (path / "tokenizer.model").write_bytes(media.train_sentencepiece(vocab_size=VOCAB))
    (path / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": None, "legacy": False, "padding_side": "right", "model_max_length": 2048,
        "tokenizer_class": "LlamaTokenizer"}))
    (path / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                              "unk_token": "<unk>", "pad_token": "<unk>"}))
    if transformers_saved:
        AutoTokenizer.from_pretrained(path).save_pretrained(path)
        assert (path / "tokenizer.json").exists()


def export(original, root, *flags):
    """original -> ours -> transformers, the route the README gives."""
    assert run("--src", original, "--dst", root / "ours") == 0
    assert run("--src", root / "ours", "--dst", root / "export", "--to", "hf", *flags) == 0
    return root / "ours", root / "export"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export_original")
    model = oracle.save_tiny_model(root / "hf", text=dict(vocab_size=VOCAB))
    write_original(root / "original", root / "hf", model)
    write_original_tokenizer(root / "original")
    ours, export_dir = export(root / "original", root)
    return root / "original", ours, export_dir


class FramesAsImages(VideoLlavaImageProcessor):
    """transformers' video transform, which is its image transform per frame (VideoLlavaVideoProcessor
    itself needs torchvision)."""

    def __call__(self, videos=None, **kwargs):
        frames = [super(FramesAsImages, self).__call__(images=list(v), return_tensors="np") for v in videos]
        return {"pixel_values_videos": np.stack([f.get("pixel_values", f.get("pixel_values_images")) for f in frames])}


def hf_processor(path, monkeypatch) -> VideoLlavaProcessor:
    """`VideoLlavaProcessor.from_pretrained(path)`; without torchvision its video processor is a stand-in
    built from the dir's video_preprocessor_config.json (transformers' video transform is its image
    transform per frame)."""
    if not is_torchvision_available():
        def frames_as_images(directory, **kwargs):
            config = json.loads((pathlib.Path(directory) / "video_preprocessor_config.json").read_text())
            return FramesAsImages(**{k: v for k, v in config.items() if not k.endswith("_type")})

        monkeypatch.setattr(video_processing_auto.AutoVideoProcessor, "from_pretrained", frames_as_images)
        monkeypatch.setattr(ProcessorMixin, "check_argument_for_proper_class", lambda *args: None)
    return VideoLlavaProcessor.from_pretrained(path)


def media_inputs(seed: int, frames: int = 8):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (40, 52, 3), dtype=np.uint8), rng.integers(0, 256, (frames, 36, 30, 3), dtype=np.uint8)


def test_export_adds_placeholder_tokens_rows_and_processor_files(exported):
    _, _, path = exported
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["vocab_size"] == GROWN
    assert (config["image_token_index"], config["video_token_index"], config["pad_token_id"]) == (IMAGE_ID, VIDEO_ID, PAD_ID)
    weights = load_file(path / "model.safetensors")
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
        rows = weights[name]
        assert rows.shape == (GROWN, 48)
        np.testing.assert_allclose(rows[VOCAB:], np.broadcast_to(rows[:VOCAB].mean(0), (GROWN - VOCAB, 48)), atol=1e-6)
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.convert_tokens_to_ids(["<image>", "<video>", "<pad>"]) == [IMAGE_ID, VIDEO_ID, PAD_ID]
    assert (tokenizer.pad_token, tokenizer.padding_side, len(tokenizer)) == ("<pad>", "left", VOCAB + 3)
    assert {"preprocessor_config.json", "video_preprocessor_config.json", "processor_config.json"} <= {
        p.name for p in path.iterdir()}
    text = "USER: <image>\n<video>\nWhat is it? ASSISTANT:"
    image, video = media_inputs(0)
    got = vllava_jax.Processor.from_pretrained(path)(text=text, images=[image], videos=[video])["input_ids"]
    np.testing.assert_array_equal(got, [tokenizer.encode(text.replace("<image>", "<image>" * 4).replace(
        "<video>", "<video>" * 40))])


def test_export_refuses_a_tokenizer_that_gives_an_added_id_another_token(exported, tmp_path, capsys, monkeypatch):
    _, ours, _ = exported
    monkeypatch.setattr(write_lib, "write_shard", lambda *args: pytest.fail("a shard was written before the check"))
    shutil.copytree(ours, tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {str(PAD_ID): {"content": "<extra>", "special": True}}
    (tmp_path / "ours" / "tokenizer_config.json").write_text(json.dumps(config))
    result = in_process(convert.main, ["--src", tmp_path / "ours", "--dst", tmp_path / "export", "--to", "hf"], capsys)
    assert_user_error(result, 1, "tokenizer_config.json: has '<pad>' or id 322 with another meaning")
    assert not (tmp_path / "export").exists()


def test_transformers_processor_and_model_on_the_export_match_ours_on_the_source(exported, monkeypatch):
    original, ours_dir, path = exported
    processor = hf_processor(path, monkeypatch)
    reference = VideoLlavaForConditionalGeneration.from_pretrained(path).eval()
    image, video = media_inputs(0)
    text = "USER: <image>\n<video>\nWhat is in the picture and the clip? ASSISTANT:"
    want = processor(text=text, images=[image], videos=[video], return_tensors="pt")
    ours_processor = vllava_jax.Processor.from_pretrained(ours_dir)
    got = ours_processor(text=text, images=[image], videos=[video])
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"].numpy())
    assert (got["input_ids"] == IMAGE_ID).sum() == 4 and (got["input_ids"] == VIDEO_ID).sum() == 8 * 5
    with torch.no_grad():
        ref = reference(**want).logits.numpy()
    ours = np.asarray(vllava_jax.load_pretrained(original)(
        got["input_ids"], got["attention_mask"], got["pixel_values_images"], got["pixel_values_videos"]).logits)
    assert ref.shape[-1] == GROWN and ours.shape[-1] == VOCAB
    scale = np.abs(ref[..., :VOCAB]).max()
    assert np.abs(ref[..., :VOCAB] - ours).max() < 1e-4 * scale
    # the added columns: the LM head's mean row gives each the mean of the old logits, below the best one
    np.testing.assert_allclose(ref[..., VOCAB:], np.broadcast_to(ours.mean(-1, keepdims=True), ref[..., VOCAB:].shape),
                               atol=1e-4 * scale)


def test_transformers_generate_on_the_export_equals_ours_on_the_source(exported, monkeypatch):
    original, ours_dir, path = exported
    processor = hf_processor(path, monkeypatch)
    reference = VideoLlavaForConditionalGeneration.from_pretrained(path).eval()
    ours_processor, ours = vllava_jax.Processor.from_pretrained(ours_dir), vllava_jax.load_pretrained(original)
    new_tokens, answers = 16, []
    for seed, question in ((1, "What happens in the video?"), (2, "Why is the sky blue?")):
        _, video = media_inputs(seed)
        text = f"USER: <video>\n{question} ASSISTANT:"
        want = processor(text=text, videos=[video], return_tensors="pt")
        with torch.no_grad():  # EOS disabled: <pad>'s logit is the mean of the others', never the greedy pick
            out = reference.generate(**want, max_new_tokens=new_tokens, do_sample=False, eos_token_id=PAD_ID,
                                     pad_token_id=PAD_ID, output_scores=True, return_dict_in_generate=True)
        margins = [float(s.topk(2).values[0, 0] - s.topk(2).values[0, 1]) for s in out.scores]
        assert min(margins) > 1e-3, margins  # every greedy choice is clear of float32 noise
        got = ours_processor(text=text, videos=[video])
        mine = ours.generate(got["input_ids"], got["attention_mask"], pixel_values_videos=got["pixel_values_videos"],
                             max_new_tokens=new_tokens, eos_token_id=())
        assert out.sequences.shape[1] - want["input_ids"].shape[1] == new_tokens
        np.testing.assert_array_equal(mine, out.sequences.numpy())
        answers.append(tuple(mine[0, got["input_ids"].shape[1]:]))
    assert answers[0] != answers[1]


def test_transformers_source_exports_as_before(tmp_path):
    """A transformers-format source gains nothing: the export holds the source's tensors, config and side files."""
    source = tmp_path / "hf"
    media.save_tokenizer_checkpoint(source, image_size=28)  # tokenizer with <image>/<video>/<pad>, preprocessor_config
    config = json.loads((source / "config.json").read_text())
    model = oracle.save_tiny_model(source / "weights", text=dict(vocab_size=config["text_config"]["vocab_size"]))
    for item in (source / "weights").iterdir():
        item.rename(source / item.name)
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir() if p.is_file()}
    assert run("--src", source, "--dst", tmp_path / "ours") == 0
    assert run("--src", tmp_path / "ours", "--dst", tmp_path / "export", "--to", "hf") == 0
    export_dir = tmp_path / "export"
    assert sorted(p.name for p in export_dir.iterdir()) == sorted(set(write_lib.SIDE_FILES) & set(digests) | {
        "config.json", "model.safetensors"})
    for name in set(write_lib.SIDE_FILES) & set(digests):
        assert hashlib.sha256((export_dir / name).read_bytes()).hexdigest() == digests[name], name
    assert json.loads((export_dir / "config.json").read_text()) == vllava_jax.VideoLlavaConfig.from_json(
        source / "config.json").to_hf_dict()
    assert json.loads((export_dir / "config.json").read_text())["text_config"]["vocab_size"] == model.config.text_config.vocab_size
    exported_tensors, source_tensors = load_file(export_dir / "model.safetensors"), load_file(source / "model.safetensors")
    assert exported_tensors.keys() == source_tensors.keys()
    for name, tensor in source_tensors.items():
        np.testing.assert_array_equal(exported_tensors[name], tensor, err_msg=name)


def without_temporal(model: vllava_jax.VideoLlava) -> vllava_jax.VideoLlava:
    """`model` with its video tower's temporal attention taken out: what transformers can hold of it."""
    video = dataclasses.replace(model.config.video_vision_config, add_time_attn=False)
    config = dataclasses.replace(model.config, video_vision_config=video)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: VideoLlavaModel(config, model.policy, nnx.Rngs(0))))
    trained = dict(nnx.to_flat_state(model.state))
    state = nnx.from_flat_state([(p, v.replace(trained[p][...])) for p, v in nnx.to_flat_state(abstract)])
    return vllava_jax.VideoLlava(config, model.policy, graphdef, state)


def test_drop_temporal_export_equals_ours_without_temporal(tmp_path, monkeypatch):
    """A temporal original exported with --drop-temporal: transformers on the export equals our model on the
    source with the temporal blocks taken out (video pixels by transformers' transform in both)."""
    write_temporal_original(tmp_path, text=dict(vocab_size=VOCAB))
    write_original_tokenizer(tmp_path / "original", transformers_saved=True)
    ours_dir, path = export(tmp_path / "original", tmp_path, "--drop-temporal")
    source = vllava_jax.load_pretrained(tmp_path / "original")
    assert source.config.video_vision_config.add_time_attn
    processor = hf_processor(path, monkeypatch)
    reference = VideoLlavaForConditionalGeneration.from_pretrained(path).eval()
    _, video = media_inputs(3, frames=FRAMES)
    text = "USER: <video>\nWhat happens? ASSISTANT:"
    want = processor(text=text, videos=[video], return_tensors="pt")
    got = vllava_jax.Processor.from_pretrained(ours_dir, video_transform="hf")(text=text, videos=[video])
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"].numpy())
    with torch.no_grad():
        ref = reference(**want).logits.numpy()[..., :VOCAB]
    args = got["input_ids"], got["attention_mask"], None, got["pixel_values_videos"]
    ours = np.asarray(without_temporal(source)(*args).logits)
    assert np.abs(ref - ours).max() < 1e-4 * np.abs(ref).max()
    with_temporal = np.asarray(source(*args).logits)
    assert np.abs(ref - with_temporal).max() > 1e-2 * np.abs(ref).max()  # what --drop-temporal loses
