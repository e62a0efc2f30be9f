"""The trainer's input: the Grain pipeline over annotation files, or synthetic batches for smoke runs."""

from __future__ import annotations

import ml_collections

from vllava_jax.config import VideoLlavaConfig
from vllava_jax.errors import ConfigError
from vllava_jax.train.synthetic import SyntheticBatches


def check_max_length(config: ml_collections.ConfigDict, model_config: VideoLlavaConfig) -> None:
    """Refuse a `max_length` that cannot hold BOS, one medium and one answer token of each kind the data
    reads (annotation files may hold images and videos; synthetic batches hold images): every such
    sample would be skipped. An 8-frame video is 2,056 tokens at 224 px; the original truncates
    after expanding them at 3,072 (`--tokenizer_model_max_length`)."""
    kinds = {"image": model_config.image_seq_length}
    if config.data.kind != "synthetic":
        kinds["video"] = model_config.video_seq_length(model_config.video_tower_config.num_frames)
    for kind, tokens in kinds.items():
        if config.max_length < tokens + 2:
            raise ConfigError(f"config.max_length {config.max_length} cannot hold one {kind} ({tokens} visual tokens) "
                              f"with BOS and an answer token: every {kind} sample would be skipped; set it to at "
                              f"least {tokens + 2} (the 7B recipes use 3072)")


def make_data(config: ml_collections.ConfigDict, model_config: VideoLlavaConfig):
    """An iterator of fixed-shape batches (data_pipelines.batching's contract) with get/set_state.

    `data.kind`: "annotations" reads `data.annotations` (LLaVA-format JSON/JSONL files, media under
    the matching `data.media_roots`) and `data.tfds_dirs` (ArrayRecord datasets written by
    `python -m data_pipelines.build_tfds`), all mixed by `data.weights` (annotation files first),
    tokenized with the checkpoint's tokenizer (`data.tokenizer`, default `init_checkpoint`), with room
    for `data.images_per_row` images and `data.videos_per_row` videos per row (more only pays off
    with `data.pack`: the towers run on every entry);
    "synthetic" makes random batches.
    """
    data = config.data
    if model_config is not None:
        check_max_length(config, model_config)
    if data.kind == "synthetic":
        import jax

        count = jax.process_count()
        return SyntheticBatches(model_config, rows=config.batch_size * count, length=config.max_length,
                                seed=config.seed, process=(jax.process_index(), count))
    if data.kind != "annotations":
        raise ConfigError(f"data.kind {data.kind!r} is not 'annotations' or 'synthetic'")
    from data_pipelines.batching import BatchSpec
    from data_pipelines.pipeline import make_dataset
    from data_pipelines.sources import AnnotationSource
    from data_pipelines.tfds_builder import TfdsSource
    from data_pipelines.transforms import ExampleTransform
    from vllava_jax.processing.processor import Processor

    tokenizer_dir = data.get("tokenizer") or config.init_checkpoint
    if not tokenizer_dir:
        raise ConfigError("data.kind='annotations' needs a tokenizer: set data.tokenizer or init_checkpoint")
    if len(data.annotations) != len(data.media_roots):
        raise ConfigError(f"data.annotations ({len(data.annotations)}) and data.media_roots "
                          f"({len(data.media_roots)}) must pair up")
    sources = [AnnotationSource(a, m) for a, m in zip(data.annotations, data.media_roots)]
    sources += [TfdsSource(d) for d in data.get("tfds_dirs", [])]
    if not sources:
        raise ConfigError("data.kind='annotations' reads nothing: set data.annotations or data.tfds_dirs")
    if data.weights and len(data.weights) != len(sources):
        raise ConfigError(f"data.weights has {len(data.weights)} entries for {len(sources)} sources "
                          "(data.annotations, then data.tfds_dirs)")
    spec = BatchSpec.for_processor(Processor.from_pretrained(tokenizer_dir), config.batch_size, config.max_length,
                                   data.images_per_row, data.videos_per_row)
    transform = ExampleTransform(tokenizer_dir, template=data.template, max_length=config.max_length)
    dataset = make_dataset(sources, transform, spec, weights=list(data.weights) or None, seed=config.seed,
                           num_epochs=None, pack=data.pack, num_workers=data.num_workers)
    return iter(dataset)
