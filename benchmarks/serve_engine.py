"""Serving engine throughput: new tokens/s with N requests in flight against one request at a time.

    python -m benchmarks.serve_engine [--clients 4 16] [--sequential 4] [--new-tokens 64] [--max-length 640]
                                      [--max-prefixes 4]

The engine alone (no HTTP; benchmarks/serve.py measures the server): the small config with
random weights, float32, CPU, EOS disabled (`Engine(eos_token_ids=())`) so every request decodes
exactly --new-tokens; each request a different question after the same system prompt and 8-frame
clip, whose features are cached and whose prompt prefix is stored by the first request (so a
request's cost is its question's prefill and its decode steps; with --max-prefixes 0, its whole
prompt's prefill). "1 at a time" submits --sequential requests, each when the previous one has
finished; a round of N clients submits N requests at once (as benchmarks/serve.py); tokens/s =
requests x new tokens / wall time. The engine has max(--clients) rows throughout, and steps over
the rows in use (rounded up to a power of two), so "1 at a time" runs as fast as the engine runs
one request. Programs are compiled by a warm-up round first. `benchmarks.accelerator` runs
`measure` on the 7B shape.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import vllava_jax
from benchmarks.common import VIDEO_TOKEN, small_config
from vllava_jax.serve.engine import Engine, Medium, Request


def requests(count: int, new_tokens: int, image_size: int, question_tokens: int) -> list[Request]:
    rng = np.random.default_rng(0)
    clip = Medium("video:bench:clip", rng.standard_normal((8, 3, image_size, image_size)).astype(np.float32))
    per_video = 8 * ((image_size // 14) ** 2 + 1)
    system = rng.integers(3, VIDEO_TOKEN - 1, 5)  # the same system prompt for everyone, as a server's template
    made = []
    for _ in range(count):
        ids = np.concatenate([system, np.full(per_video, VIDEO_TOKEN),
                              rng.integers(3, VIDEO_TOKEN - 1, question_tokens)]).astype(np.int32)
        made.append(Request(ids, videos=(clip,), max_new_tokens=new_tokens))
    return made


def run(engine: Engine, work: list[Request], clients: int) -> tuple[float, str]:
    """Seconds to answer every request of `work`, `clients` submitted at once (1: one after another),
    and the decode steps it took per step program's row count ("rows x steps")."""
    engine.steps_by_rows.clear()
    start = time.perf_counter()
    for first in range(0, len(work), clients):
        done = [threading.Event() for _ in work[first: first + clients]]
        for request, finished in zip(work[first: first + clients], done):
            engine.submit(request, lambda event, finished=finished: event.token is None and finished.set())
        for finished in done:
            finished.wait()
    seconds = time.perf_counter() - start
    return seconds, " ".join(f"{rows}x{steps}" for rows, steps in sorted(engine.steps_by_rows.items()))


def measure(model, clients: list[int], sequential: int, new_tokens: int, image_size: int, question_tokens: int,
            max_length: int, max_prefixes: int) -> list[tuple[int, int, float, str]]:
    """(clients, requests, seconds, steps) for one at a time (clients 1, `sequential` requests) and
    for each round of `clients` requests at once, on an engine of max(clients) rows, after a warm-up
    round of each that compiles the step programs the rounds use, caches the clip's features and
    stores its prefix."""
    rows = max(clients)
    engine = Engine(model, max_batch=rows, max_length=max_length, max_prefixes=max_prefixes, eos_token_ids=())
    engine.start()
    try:
        work = requests(rows, new_tokens, image_size, question_tokens)
        for count in (1, *clients):
            run(engine, work[:count], count)
        figures = [(1, sequential, *run(engine, work[:sequential], 1))]
        return figures + [(count, count, *run(engine, work[:count], count)) for count in clients]
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16], help="requests in flight at once")
    parser.add_argument("--sequential", type=int, default=4, help="requests answered one at a time")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--question-tokens", type=int, default=24)
    parser.add_argument("--max-length", type=int, default=640, help="the engine's cache columns per row")
    parser.add_argument("--max-prefixes", type=int, default=4, help="the engine's stored prompt prefixes (0: off)")
    args = parser.parse_args()

    model = vllava_jax.VideoLlava.random(vllava_jax.VideoLlavaConfig.from_hf_dict(small_config(args.image_size).to_dict()))
    figures = measure(model, args.clients, args.sequential, args.new_tokens, args.image_size, args.question_tokens,
                      args.max_length, args.max_prefixes)
    prompt = len(requests(1, 1, args.image_size, args.question_tokens)[0].prompt_ids)
    print(f"float32, CPU, {os.cpu_count()} cores, small config, prompt {prompt} tokens "
          f"(8 frames at {args.image_size}px, features cached), {args.new_tokens} new tokens, max_batch "
          f"{max(args.clients)}, max_length {args.max_length}, max_prefixes {args.max_prefixes}")
    print("| clients | requests | seconds | tokens/s | vs 1 at a time | decode steps (rows x steps) |")
    print("| --- | --- | --- | --- | --- | --- |")
    sequential = args.sequential * args.new_tokens / figures[0][2]
    for clients, count, seconds, steps in figures:
        rate = count * args.new_tokens / seconds
        print(f"| {clients} | {count} | {seconds:.2f} | {rate:.1f} | {rate / sequential:.2f} | {steps} |")


if __name__ == "__main__":
    main()
