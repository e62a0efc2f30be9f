"""`python -m vllava_jax.convert`: PyTorch checkpoints to our Orbax format, and ours back to transformers.

    python -m vllava_jax.convert --src Video-LLaVA-7B-hf --dst ckpt/7b [--dtype bfloat16] [--force]
    python -m vllava_jax.convert --src ckpt/7b --dst export/7b-hf --to hf [--max-shard-size 5GB]
    python -m vllava_jax.convert --src ckpt/7b --dst ckpt/7b-tuned --merge-adapter run/adapter

Tensors stream one at a time (memory-mapped reads, one stacked layer per write), so memory stays
near the largest tensor whatever the model's size.
"""

from __future__ import annotations

import argparse
import re
import time

from tqdm import tqdm

from vllava_jax import cli
from vllava_jax.checkpoint import peft, read, write
from vllava_jax.modeling.video_llava import parameter_shapes

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 5GB, 500MB or 20KB")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m vllava_jax.convert", description=__doc__)
    p.add_argument("--src", required=True,
                   help="checkpoint dir to read: transformers (Video-LLaVA-7B-hf), the original Video-LLaVA-7B "
                        "(safetensors or pytorch_model-*.bin), or ours; the format is detected from config.json")
    p.add_argument("--dst", required=True, help="dir to write; appears only when complete")
    p.add_argument("--to", choices=("ours", "hf"), default="ours",
                   help="ours: Orbax params + config.json + tokenizer files (default); hf: transformers "
                        "safetensors shards that VideoLlavaForConditionalGeneration.from_pretrained loads")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="dtype of the written weights (default: float32, or as stored when exporting ours --to hf)")
    p.add_argument("--max-shard-size", type=parse_size, default=write.DEFAULT_MAX_SHARD_BYTES,
                   help="with --to hf: largest safetensors file before splitting into shards (default 5GB)")
    p.add_argument("--drop-temporal", action="store_true",
                   help="with --to hf: export a model whose video tower has LanguageBind temporal attention "
                        "without those weights (transformers has no place for them; video outputs change)")
    p.add_argument("--merge-adapter", metavar="DIR",
                   help="a LoRA adapter dir (PEFT's adapter_model.safetensors + adapter_config.json, as training "
                        "exports) to fold into the weights (and its projector, if saved) before writing")
    p.add_argument("--force", action="store_true", help="replace --dst if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    start = time.perf_counter()
    source = read.open_source(args.src)
    write.check_destination(args.dst, args.force, sources=(source.path,))
    keep_stored = args.to == "hf" and source.format == "ours"
    dtype = args.dtype or (None if keep_stored else "float32")
    params = read.leaves(source, parameter_shapes(source.config), dtype)
    if args.merge_adapter:
        params = peft.merged_leaves(params, args.merge_adapter, source.config)
    total = sum(len(leaf.parts) for leaf in params.values())
    written = [0]
    with tqdm(total=total, unit="tensor", desc=f"{source.format} -> {args.to}") as bar:

        def on_bytes(n: int) -> None:
            written[0] += n
            bar.update(1)

        if args.to == "hf":
            write.write_hf(args.dst, source.config, params, side_files_from=source.path,
                           max_shard_bytes=args.max_shard_size, drop_temporal=args.drop_temporal,
                           force=args.force, on_bytes=on_bytes)
        else:
            write.write_ours(args.dst, source, params, force=args.force, on_bytes=on_bytes)
    print(f"wrote {args.dst} ({args.to}): {bar.n} tensors, {written[0] / 1e6:,.1f} MB in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    cli.run(main, resumable=True)
