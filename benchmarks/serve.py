"""Serving throughput: tokens/s with 1, 4 and 16 concurrent clients against one client at a time, same server.

    python -m benchmarks.serve [--clients 1 4 16] [--new-tokens 64] [--runs 3] [--image-size 112]

The server is `python -m vllava_jax.serve` in a subprocess, float32, on the small benchmark config
(`benchmarks.common.small_config`: 12x384 towers, 12x768 LLaMA, vocab 32064) with random weights and
the tests' small sentencepiece tokenizer. EOS is disabled by the checkpoint: its config.json has
`eos_token_id: null`, so every answer runs exactly --new-tokens (the random model's text is noise).
Workload: each client asks a different question about the same 8-frame clip (a file:// URL under
--media-root), so the clip's features are computed once, by the warm-up, and the prompt up to the
clip is stored once (the server's prefix reuse; `--max-prefixes 0` measures without it). A round of N clients sends
N requests at once: tokens/s = N x new tokens / wall time; the baseline sends --sequential questions
one after another to the same server. Each run measures the baseline and every N in turn (so load
from elsewhere on the machine weighs on both); medians of --runs runs, after a warm-up round.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

import vllava_jax
from benchmarks.common import small_config
from tests import media
from vllava_jax.checkpoint.write import save_hf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_checkpoint(path: str, image_size: int) -> str:
    """The small config with random weights, the tests' tokenizer (its placeholder ids), no EOS; returns the dir."""
    tokenizer_dir = os.path.join(path, "tokenizer")
    os.makedirs(tokenizer_dir)
    tiny = media.save_tokenizer_checkpoint(pathlib.Path(tokenizer_dir), image_size=image_size)[0]
    raw = small_config(image_size).to_dict() | {
        "image_token_index": tiny.convert_tokens_to_ids("<image>"),
        "video_token_index": tiny.convert_tokens_to_ids("<video>"), "pad_token_id": tiny.pad_token_id}
    raw["text_config"] |= {"eos_token_id": None, "pad_token_id": tiny.pad_token_id}
    config = vllava_jax.VideoLlavaConfig.from_hf_dict(raw, "benchmark config")
    model_dir = save_hf(vllava_jax.VideoLlava.random(config, seed=0), os.path.join(path, "model"), overwrite=True)
    for name in os.listdir(tokenizer_dir):
        if name != "config.json":
            shutil.copy(os.path.join(tokenizer_dir, name), os.path.join(str(model_dir), name))
    return str(model_dir)


def start_server(model_dir: str, media_root: str, max_batch: int, max_length: int, max_prefixes: int, log
                 ) -> tuple[subprocess.Popen, str]:
    """`python -m vllava_jax.serve` on a free port, its log to `log`; returns once /health answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "vllava_jax.serve", "--model", model_dir, "--port", str(port),
                               "--dtype", "float32", "--media-root", media_root, "--max-batch", str(max_batch),
                               "--max-length", str(max_length), "--max-prefixes", str(max_prefixes)],
                              env=dict(os.environ, PYTHONPATH=ROOT), cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited; its log: {log.name}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return server, url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not come up in 10 minutes")
        time.sleep(0.5)


def ask(url: str, clip: str, question: str, new_tokens: int) -> int:
    body = {"model": "model", "max_tokens": new_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": f"file://{clip}"}},
                                                      {"type": "text", "text": question}]}]}
    reply = httpx.post(url + "/v1/chat/completions", json=body, timeout=600)
    if reply.status_code != 200:
        raise RuntimeError(f"the server answered {reply.status_code}: {reply.text[:2000]}")
    tokens = reply.json()["usage"]["completion_tokens"]
    if tokens != new_tokens:
        raise RuntimeError(f"an answer stopped after {tokens} of {new_tokens} tokens: EOS is not disabled")
    return tokens


def round_rate(url: str, clip: str, clients: int, new_tokens: int, together: bool) -> float:
    """Tokens/s of `clients` questions sent at once (or one after another)."""
    questions = [f"Question {i}: what happens in this video, and why?" for i in range(clients)]
    start = time.perf_counter()
    if together:
        with concurrent.futures.ThreadPoolExecutor(clients) as pool:
            tokens = sum(pool.map(lambda q: ask(url, clip, q, new_tokens), questions))
    else:
        tokens = sum(ask(url, clip, q, new_tokens) for q in questions)
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16], help="concurrent clients to measure")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per answer")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds per figure (median reported)")
    parser.add_argument("--sequential", type=int, default=4, help="questions per one-at-a-time round")
    parser.add_argument("--image-size", type=int, default=112, help="frame size (224 is the real model's)")
    parser.add_argument("--max-length", type=int, default=1024, help="the server's --max-length (cache columns)")
    parser.add_argument("--max-prefixes", type=int, default=4, help="the server's --max-prefixes (0: no prefix reuse)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_checkpoint(tmp, args.image_size)
        root = os.path.join(tmp, "media")
        os.makedirs(root)
        clip = os.path.join(root, "clip.mp4")
        media.write_clip(clip, num_frames=24, width=160, height=120)
        log = open(os.path.join(tmp, "server.log"), "w")
        server, url = start_server(model_dir, root, max(args.clients), args.max_length, args.max_prefixes, log)
        try:
            # warm-up, a round of each: compiles the step programs the rounds use, computes the clip's
            # features and stores the prompt's prefix
            round_rate(url, clip, 1, args.new_tokens, False)
            for clients in args.clients:
                round_rate(url, clip, clients, args.new_tokens, True)
            rates: dict[int, list[float]] = {c: [] for c in [0, *args.clients]}  # 0: one client at a time
            for run in range(args.runs):
                rates[0].append(round_rate(url, clip, args.sequential, args.new_tokens, False))
                for clients in args.clients:
                    rates[clients].append(round_rate(url, clip, clients, args.new_tokens, True))
                print(f"run {run}: " + ", ".join(f"{c or 'sequential'}: {r[-1]:.1f} tok/s" for c, r in rates.items()),
                      flush=True)
            alone = statistics.median(rates[0])
            rows = [(c, statistics.median(rates[c]), alone) for c in args.clients]
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
    print(f"serving throughput, small config, 8 frames at {args.image_size}px, {args.new_tokens} new tokens per "
          f"answer, float32, {os.cpu_count()} CPUs, --max-prefixes {args.max_prefixes}, median of {args.runs}")
    print(f"{'clients':>8} {'tok/s':>10} {'sequential tok/s':>18} {'ratio':>7}")
    for clients, together, alone in rows:
        print(f"{clients:>8} {together:>10.1f} {alone:>18.1f} {together / alone:>6.2f}x")
    print(json.dumps({"rows": [dict(clients=c, tok_s=t, sequential_tok_s=a) for c, t, a in rows]}))


if __name__ == "__main__":
    main()
