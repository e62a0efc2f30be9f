"""Build TFDS ArrayRecord shards from a LLaVA/Video-LLaVA annotation file and its media root.

    python -m data_pipelines.build_tfds --annotations videochatgpt_tune.json \\
        --media-root data/videochatgpt_tune --data-dir tfds/videochatgpt --video-frames 8 --workers 16

Training reads the result with `data.tfds_dirs` (vllava_jax/train/data.py) or
`data_pipelines.tfds_builder.TfdsSource`. See tfds_builder's docstring for the two storage modes.
"""

from __future__ import annotations

from data_pipelines.tfds_builder import build
from vllava_jax import cli


def parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m data_pipelines.build_tfds", description=__doc__)
    p.add_argument("--annotations", required=True, help="JSON or JSONL list of {id, image|video, conversations}")
    p.add_argument("--media-root", required=True, help="dir the annotation's media paths are relative to")
    p.add_argument("--data-dir", required=True, help="output dir (the dataset goes to DATA_DIR/NAME/VERSION)")
    p.add_argument("--video-frames", type=int, default=0,
                   help="store each video's N sampled frames as raw uint8 instead of the encoded file "
                        "(N must be the processor's num_frames, 8 for Video-LLaVA); 0: store encoded bytes")
    p.add_argument("--examples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=0, help="processes that read and sample media (0: this one)")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset already built in DATA_DIR")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    path = build(args.annotations, args.media_root, args.data_dir, video_frames=args.video_frames or None,
                 examples_per_shard=args.examples_per_shard, overwrite=args.overwrite, workers=args.workers)
    print(f"built {path}")
    return 0


if __name__ == "__main__":
    cli.run(main)
