"""Serve a Video-LLaVA checkpoint over OpenAI's chat-completions API, with a web page at `/`.

    python -m vllava_jax.serve --model CKPT [--port 8000] [--media-root DIR] [--api-key KEY]

CKPT is any directory `load_pretrained` reads that also holds the tokenizer files (as for
`python -m vllava_jax.generate`). Requests join one continuously batched decode loop of up to
`--max-batch` answers; each question about a video already seen reuses its visual features and
the prompt up to the video (keys and values computed once: only the question is prefilled).
Media come inside the request as data: URLs, or as file:// URLs under `--media-root`.
The API key can also come from the environment variable VLLAVA_API_KEY (kept out of `ps`).
"""

from __future__ import annotations

import argparse
import errno
import os
import socket

from etils import epath

import vllava_jax
from vllava_jax import cli
from vllava_jax.errors import UsageError, VllavaError
from vllava_jax.processing.conversation import TEMPLATES

API_KEY_ENV = "VLLAVA_API_KEY"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.ArgumentParser(prog="python -m vllava_jax.serve", description=__doc__)
    parser.add_argument("--model", required=True, help="checkpoint directory (any format load_pretrained reads)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    parser.add_argument("--max-batch", type=int, default=16, help="answers decoded together at most")
    parser.add_argument("--max-length", type=int, help="prompt + answer tokens per request at most "
                        "(default: the model's context)")
    parser.add_argument("--max-prefixes", type=int, default=4, help="prompt prefixes (text up to the last medium) "
                        "kept for reuse by later questions about the same media; each takes the cache memory of "
                        "one --max-length row, on every device of the batch axes (0: off)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="parameter/compute dtype")
    parser.add_argument("--media-root", metavar="DIR", help="directory whose files requests may name by file:// URL "
                        "(default: none; media come as data: URLs)")
    parser.add_argument("--api-key", default=os.environ.get(API_KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}, else none)")
    parser.add_argument("--template", default="llava_v1", choices=sorted(TEMPLATES), help="conversation template")
    parser.add_argument("--adapter", metavar="DIR", help="a LoRA adapter dir (PEFT format, as training exports) "
                        "applied on top of --model without merging")
    parser.add_argument("--max-body-mb", type=float, default=64, help="largest request body accepted (413 past it)")
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in 0..65535, got {args.port}")
    if args.max_batch < 1:
        parser.error(f"--max-batch must be at least 1, got {args.max_batch}")
    if args.max_prefixes < 0:
        parser.error(f"--max-prefixes must be 0 or more, got {args.max_prefixes}")
    if args.max_length is not None and args.max_length < 2:
        parser.error(f"--max-length must be at least 2, got {args.max_length}")
    if args.max_body_mb <= 0:
        parser.error(f"--max-body-mb must be positive, got {args.max_body_mb}")
    for flag, path in (("--model", args.model), ("--media-root", args.media_root), ("--adapter", args.adapter)):
        if path is not None and not epath.Path(path).is_dir():
            parser.error(f"{flag} {path}: no such directory")
    if args.api_key == "":
        parser.error("--api-key is empty; give a key, or leave it out to serve without one")
    return args


def listening_socket(host: str, port: int) -> socket.socket:
    """Bind before the model loads, so a taken port fails in a second, not after minutes of loading."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except socket.gaierror as e:
        raise UsageError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    except OSError as e:
        hint = "; pick another --port" if e.errno == errno.EADDRINUSE else ""
        raise UsageError(f"--host {host} --port {port}: cannot listen ({e.strerror}){hint}") from None
    return sock


def main(argv: list[str] | None = None) -> None:
    """Checks the arguments, the port and the tokenizer files before the model loads."""
    args = parse_args(argv)
    try:
        import uvicorn

        from vllava_jax.serve.app import build_service, create_app
    except ModuleNotFoundError as e:
        raise VllavaError(f"the server needs the serve extra ({e.name} is not installed): "
                          "pip install -e '.[serve]'") from None
    sock = listening_socket(args.host, args.port)
    processor = vllava_jax.Processor.from_pretrained(args.model)
    context = processor.config.text_config.max_position_embeddings
    if args.max_length is not None and args.max_length > context:
        raise UsageError(f"--max-length {args.max_length} is past the model's context of {context} positions")
    model = vllava_jax.load_pretrained(args.model, dtype=args.dtype)
    if args.adapter:
        from vllava_jax.checkpoint import peft

        model = peft.load_adapter(model, args.adapter)
    service = build_service(model, processor, model_id=epath.Path(args.model).name, template=args.template,
                            max_batch=args.max_batch, max_length=args.max_length, media_root=args.media_root,
                            max_prefixes=args.max_prefixes)
    app = create_app(service, api_key=args.api_key, max_body_bytes=int(args.max_body_mb * (1 << 20)))
    host, port = sock.getsockname()[:2]
    print(f"serving {service.model_id} on http://{host}:{port}/ (OpenAI API under /v1)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="info")).run(sockets=[sock])


if __name__ == "__main__":
    cli.run(main)
