"""`python -m vllava_jax.serve` as a user starts it: flags checked before the model loads, `--api-key`,
and `--adapter` serving the adapter's answers (those of `generate --adapter`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from tests.cli_run import ROOT, assert_user_error, in_process
from tests.serving import data_url
from tests.test_generate_cli import checkpoint  # noqa: F401  (fixtures, shared rather than copied)
from tests.test_lora_cli import adapted  # noqa: F401
from vllava_jax import cli, generate
from vllava_jax.serve.__main__ import main


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_flags_are_checked_before_the_model_loads(checkpoint, tmp_path, capsys):  # noqa: F811
    model = tmp_path / "model"
    model.mkdir()  # no config.json: loading it would fail differently
    assert_user_error(in_process(main, ["--model", model, "--port", "70000"], capsys), 2, "--port")
    assert_user_error(in_process(main, ["--model", model, "--max-batch", "0"], capsys), 2, "--max-batch")
    assert_user_error(in_process(main, ["--model", model, "--max-prefixes", "-1"], capsys), 2, "--max-prefixes")
    assert_user_error(in_process(main, ["--model", model, "--media-root", tmp_path / "nope"], capsys), 2,
                      "--media-root", "no such directory")
    assert_user_error(in_process(main, ["--model", model, "--adapter", tmp_path / "nope"], capsys), 2, "--adapter")
    assert_user_error(in_process(main, ["--model", tmp_path / "nope"], capsys), 2, "--model")
    assert_user_error(in_process(main, ["--model", checkpoint[0], "--port", "0", "--max-length", "5000"], capsys),
                      2, "--max-length 5000", "context of 4096")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_user_error(in_process(main, ["--model", model, "--port", port], capsys), 2, "--port", str(port),
                          "another --port")


def test_adapter_and_api_key(adapted, capsys):  # noqa: F811
    path, clip, adapter, _ = adapted
    key, port = "s3cret", free_port()
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", VLLAVA_API_KEY=key)
    env.pop(cli.DEBUG_ENV, None)
    server = subprocess.Popen([sys.executable, "-m", "vllava_jax.serve", "--model", str(path), "--adapter",
                               str(adapter), "--port", str(port), "--dtype", "float32", "--max-length", "256",
                               "--max-batch", "4"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": data_url(clip)}},
                                                 {"type": "text", "text": "What happens?"}]}]
        for wrong in ("", "other"):
            with pytest.raises(openai.AuthenticationError, match="API key"):
                openai.OpenAI(base_url=url + "/v1", api_key=wrong or "x", max_retries=0).models.list()
        assert httpx.post(url + "/v1/chat/completions", json={}).status_code == 401
        client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=120)
        reply = client.chat.completions.create(model=path.name, messages=messages, max_tokens=6, temperature=0)
    finally:
        server.send_signal(signal.SIGINT)
        out, _ = server.communicate(timeout=60)
    # Ctrl-C stops it as it stops every CLI here (exit 130), after the engine closed and in-flight requests ended
    assert server.returncode == cli.EXIT_INTERRUPTED, out[-3000:]
    assert "Application shutdown complete" in out and "Traceback" not in out, out[-3000:]

    capsys.readouterr()
    generate.main(["--model", str(path), "--video", str(clip), "--prompt", "What happens?", "--max-new-tokens", "6",
                   "--adapter", str(adapter)])
    with_adapter = capsys.readouterr().out.rstrip("\n")
    assert reply.choices[0].message.content == with_adapter
    assert with_adapter != generate.ask(path, "What happens?", videos=[str(clip)], max_new_tokens=6)
