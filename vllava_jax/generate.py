"""Ask a Video-LLaVA model about videos and images; the answer streams to stdout as it is decoded.

    python -m vllava_jax.generate --model CKPT --video clip.mp4 --prompt "What is happening?"
    python -m vllava_jax.generate --model CKPT --image cat.jpg --chat

CKPT is any directory `load_pretrained` reads (transformers format, the original Video-LLaVA
layout, or our converted Orbax checkpoint) that also holds the tokenizer files. The prompt goes
through a conversation template (default `llava_v1`, the original project's). `--chat` keeps the
conversation going turn after turn, like the original CLI; an empty line or EOF ends it.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

import vllava_jax
from vllava_jax import generation
from vllava_jax.checkpoint import peft
from vllava_jax.processing.conversation import TEMPLATES, get_template
from vllava_jax.processing.processor import IMAGE_TOKEN, VIDEO_TOKEN


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vllava_jax.generate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="checkpoint directory (any format load_pretrained reads)")
    parser.add_argument("--video", action="append", default=[], help="a video file; repeat for several")
    parser.add_argument("--image", action="append", default=[], help="an image file; repeat for several")
    parser.add_argument("--prompt", help="the question (required unless --chat)")
    parser.add_argument("--chat", action="store_true", help="interactive multi-turn conversation on stdin")
    parser.add_argument("--template", default="llava_v1", choices=sorted(TEMPLATES), help="conversation template")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="most tokens to generate per answer")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (with --temperature)")
    parser.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest (with --temperature)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for sampling")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="parameter/compute dtype")
    parser.add_argument("--adapter", metavar="DIR", help="a LoRA adapter dir (PEFT format, as training exports) "
                        "applied on top of --model without merging")
    args = parser.parse_args(argv)
    if not args.chat and not args.prompt:
        parser.error("--prompt is required unless --chat is given")
    return args


def answer(model, processor, prompt: str, args, sampling, key) -> tuple[str, int]:
    """Stream one answer to stdout; returns its text and token count."""
    out = sys.stdout
    batch = processor(text=prompt, images=args.image or None, videos=args.video or None)
    new_ids: list[int] = []
    shown = ""
    for tokens in generation.stream(model, batch["input_ids"], batch["attention_mask"],
                                    batch.get("pixel_values_images"), batch.get("pixel_values_videos"),
                                    sampling=sampling, key=key):
        if int(tokens[0]) in sampling.eos_token_ids:
            break
        new_ids.append(int(tokens[0]))
        text = processor.decode(new_ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    out.write("\n")
    return processor.decode(new_ids, skip_special_tokens=True), len(new_ids)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    model = vllava_jax.load_pretrained(args.model, dtype=args.dtype)
    if args.adapter:
        model = peft.load_adapter(model, args.adapter)
    processor = vllava_jax.Processor.from_pretrained(args.model)
    sampling = generation.sampling_config(model.config, args.max_new_tokens, args.temperature, args.top_k,
                                          args.top_p)
    template = get_template(args.template)
    media = [IMAGE_TOKEN] * len(args.image) + [VIDEO_TOKEN] * len(args.video)
    key = jax.random.key(args.seed)
    turns: list[str] = []
    total_tokens, generate_seconds = 0, 0.0
    question = args.prompt
    while True:
        if question is None:
            try:
                question = input("USER: ").strip()
            except EOFError:
                question = ""
            if not question:
                break
        turns.append(question)
        if args.chat:
            print("ASSISTANT: ", end="", flush=True)
        key, sub = jax.random.split(key)
        began = time.perf_counter()
        reply, count = answer(model, processor, template.prompt(turns, media), args, sampling, sub)
        generate_seconds += time.perf_counter() - began
        total_tokens += count
        turns.append(reply)
        if not args.chat:
            break
        question = None
    rate = total_tokens / generate_seconds if generate_seconds else 0.0
    print(f"[{total_tokens} tokens in {generate_seconds:.1f}s ({rate:.1f} tok/s, first call compiles); "
          f"total {time.perf_counter() - start:.1f}s]", file=sys.stderr)


if __name__ == "__main__":
    main()
