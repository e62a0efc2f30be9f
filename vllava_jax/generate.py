"""Ask a Video-LLaVA model about videos and images; the answer streams to stdout as it is decoded.

    python -m vllava_jax.generate --model CKPT --video clip.mp4 --prompt "What is happening?"
    python -m vllava_jax.generate --model CKPT --image cat.jpg --chat

CKPT is any directory `load_pretrained` reads (transformers format, the original Video-LLaVA
layout, or our converted Orbax checkpoint) that also holds the tokenizer files. The prompt goes
through a conversation template (default `llava_v1`, the original project's). `--chat` keeps the
conversation going turn after turn, like the original CLI; an empty line or EOF ends it.
One `<image>`/`<video>` placeholder per file goes before the first question, unless the prompt
places them itself.
"""

from __future__ import annotations

import argparse
import sys
import time

import jax

import vllava_jax
from vllava_jax import cli, generation
from vllava_jax.checkpoint import peft
from vllava_jax.errors import InputError
from vllava_jax.processing.conversation import TEMPLATES, MediaWording, get_template, media_placeholders
from vllava_jax.processing.image import load_image
from vllava_jax.processing.video import read_frames

PLACEHOLDER_WORDING = MediaWording(text="--prompt", images="--image", videos="--video", medium="file",
                       unplaced="the CLI puts them before the question")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m vllava_jax.generate", description=__doc__)
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
    if args.max_new_tokens < 1:
        parser.error(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        parser.error(f"--temperature must be 0 (greedy) or positive, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        parser.error(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k < 0:
        parser.error(f"--top-k must be 0 (off) or positive, got {args.top_k}")
    return args


def read_media(processor, args: argparse.Namespace) -> tuple[list, list]:
    """Every --image and --video decoded up front, so a bad file fails before the model loads."""
    return [load_image(p) for p in args.image], [read_frames(p, processor.num_frames) for p in args.video]


def answer(model, processor, prompt: str, media: tuple[list, list], sampling, key,
           stream: bool = True) -> tuple[str, int]:
    """One answer, streamed to stdout as it is decoded (unless not `stream`); returns its text and token count."""
    out = sys.stdout
    images, videos = media
    batch = processor(text=prompt, images=images or None, videos=videos or None)
    new_ids: list[int] = []
    shown = ""
    for tokens in generation.stream(model, batch["input_ids"], batch["attention_mask"],
                                    batch.get("pixel_values_images"), batch.get("pixel_values_videos"),
                                    sampling=sampling, key=key):
        if int(tokens[0]) in sampling.eos_token_ids:
            break
        new_ids.append(int(tokens[0]))
        text = processor.decode(new_ids, skip_special_tokens=True)
        if stream and not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            out.write(text[len(shown):])
            out.flush()
            shown = text
    if stream:
        out.write("\n")
    return processor.decode(new_ids, skip_special_tokens=True), len(new_ids)


def ask(model_dir, question: str, *, images=(), videos=(), template: str = "llava_v1", max_new_tokens: int = 256,
        dtype: str = "float32") -> str:
    """The greedy answer `python -m vllava_jax.generate --model MODEL_DIR --prompt QUESTION [--image ...]
    [--video ...]` prints, returned instead."""
    processor = vllava_jax.Processor.from_pretrained(model_dir)
    media = [load_image(p) for p in images], [read_frames(p, processor.num_frames) for p in videos]
    placeholders = media_placeholders([question], len(images), len(videos), PLACEHOLDER_WORDING)
    model = vllava_jax.load_pretrained(model_dir, dtype=dtype)
    sampling = generation.sampling_config(model.config, max_new_tokens)  # greedy
    prompt = get_template(template).prompt([question], placeholders)
    reply, _ = answer(model, processor, prompt, media, sampling, jax.random.key(0), stream=False)
    return reply


def main(argv: list[str] | None = None) -> None:
    """Checks the arguments, the tokenizer files and every medium before the model loads."""
    args = parse_args(argv)
    start = time.perf_counter()
    template = get_template(args.template)
    placeholders = media_placeholders([args.prompt or ""], len(args.image), len(args.video), PLACEHOLDER_WORDING)
    processor = vllava_jax.Processor.from_pretrained(args.model)
    media = read_media(processor, args)
    model = vllava_jax.load_pretrained(args.model, dtype=args.dtype)
    if args.adapter:
        model = peft.load_adapter(model, args.adapter)
    sampling = generation.sampling_config(model.config, args.max_new_tokens, args.temperature, args.top_k,
                                          args.top_p)
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
        if not turns and args.chat and args.prompt is None:
            placeholders = media_placeholders([question], len(args.image), len(args.video), PLACEHOLDER_WORDING)
        turns.append(question)
        if args.chat:
            print("ASSISTANT: ", end="", flush=True)
        key, sub = jax.random.split(key)
        began = time.perf_counter()
        try:
            reply, count = answer(model, processor, template.prompt(turns, placeholders), media, sampling, sub)
        except InputError as e:
            if not args.chat or len(turns) == 1:
                raise
            turns.pop()  # the conversation so far stays; only this turn is dropped
            print(f"\nerror: {e}; this turn was dropped: ask something shorter, or end the chat "
                  "(an empty line) and start a new one", file=sys.stderr)
            question = None
            continue
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
    cli.run(main)
