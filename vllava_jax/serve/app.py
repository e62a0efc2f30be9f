"""The HTTP side: OpenAI's chat-completions API (and our page and frame preview) in front of one `Engine`.

Each request is parsed, its media decoded and its prompt tokenized on a worker thread; then it is
submitted to the engine, whose thread calls back once per chosen token. Callbacks only queue the
event onto the event loop, so the engine never waits for a client. A client that goes away (a
closed stream, a dropped connection while waiting for a whole answer) cancels its ticket, which
frees its slot at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import time
import uuid

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from vllava_jax.errors import InputError
from vllava_jax.features import FeatureCache, preprocessing_fingerprint
from vllava_jax.processing.conversation import get_template
from vllava_jax.processing.processor import Processor
from vllava_jax.serve import engine as engine_lib
from vllava_jax.serve.answer_text import AnswerText
from vllava_jax.serve.api_errors import APIError, bad_request
from vllava_jax.serve.chat import ChatRequest, parse_chat_request, parse_media_part
from vllava_jax.serve.media import MediaLoader, preview_frames

DISCONNECT_POLL_SECONDS = 0.5  # how often a non-streamed request checks that its client is still there


class _Served(StreamingResponse):
    """A stream whose ticket is cancelled however the response ends (finished, failed, client gone)."""

    def __init__(self, content, ticket: engine_lib.Ticket):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.ticket = ticket

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.ticket.cancel()


class ChatService:
    """Everything a request needs besides the HTTP plumbing: parsing, media, prompt, the engine."""

    def __init__(self, engine: engine_lib.Engine, processor: Processor, *, model_id: str, template: str,
                 max_length: int, media_root: str | None):
        self.engine, self.processor, self.model_id = engine, processor, model_id
        self.template, self.max_length = get_template(template), max_length
        self.media = MediaLoader(processor, engine.feature_cache, media_root)

    def prepare(self, chat: ChatRequest) -> engine_lib.Request:
        """The engine request for a parsed chat request: prompt ids and decoded media (runs off the event loop)."""
        try:
            prompt = chat.prompt(self.template)
        except InputError as e:  # a conversation the template cannot hold
            raise bad_request(str(e), "messages") from None
        loaded = [(ref.kind, self.media.load(ref)) for ref in chat.media]
        videos = tuple(m for kind, m in loaded if kind == "video")
        frames = videos[0].pixels.shape[0] if videos else 0
        ids = np.asarray(self.processor.tokenize([prompt], frames)["input_ids"][0], np.int32)
        max_new_tokens = chat.max_tokens or max(self.max_length - len(ids), 1)  # the engine refuses past its length
        return engine_lib.Request(ids, tuple(m for kind, m in loaded if kind == "image"), videos, max_new_tokens,
                                  chat.temperature, chat.top_p, chat.seed)

    def submit(self, request: engine_lib.Request) -> tuple[engine_lib.Ticket, asyncio.Queue]:
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        try:
            ticket = self.engine.submit(request, lambda event: loop.call_soon_threadsafe(events.put_nowait, event))
        except InputError as e:
            raise bad_request(str(e), "messages") from None
        return ticket, events


def final_event_error(event: engine_lib.Event) -> APIError | None:
    """What a last event that is not a normal end means to the client."""
    if isinstance(event.error, InputError):
        return bad_request(str(event.error), "messages")
    if event.error is not None:
        return APIError(500, f"the engine failed: {event.error}")
    if event.finish_reason == "cancelled":
        return APIError(503, "the server is shutting down; retry")
    return None


def create_app(service: ChatService, *, api_key: str | None = None, max_body_bytes: int = 64 << 20) -> FastAPI:
    """The app; the engine runs while the app does (started and closed by its lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(_):
        service.engine.start()
        try:
            yield
        finally:
            service.engine.close()

    app = FastAPI(title="vllava_jax", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(APIError)
    async def api_error(_, error: APIError):
        return error.response()

    @app.exception_handler(HTTPException)
    async def http_error(_, error: HTTPException):
        return APIError(error.status_code, str(error.detail)).response()

    @app.exception_handler(Exception)
    async def server_error(_, error: Exception):
        return APIError(500, f"internal error: {type(error).__name__}: {error}").response()

    def authorize(request: Request) -> None:
        if api_key is not None and request.headers.get("authorization") != f"Bearer {api_key}":
            raise APIError(401, "a valid API key is required: send the header 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    async def read_json(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise APIError(413, f"the request body of {int(declared)} bytes is past the limit of {max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body_bytes:
                raise APIError(413, f"the request body is past the limit of {max_body_bytes} bytes")
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise bad_request(f"the request body is not valid JSON ({e})") from None

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return (importlib.resources.files("vllava_jax.serve") / "web" / "index.html").read_text()

    @app.get("/v1/models")
    async def models(request: Request):
        authorize(request)
        return {"object": "list", "data": [{"id": service.model_id, "object": "model", "created": 0,
                                            "owned_by": "vllava_jax", "max_model_len": service.max_length}]}

    @app.post("/v1/frames")
    async def frames(request: Request):
        """Our extension: the frames (or the image) the model sees for one medium, as PNG data URLs."""
        authorize(request)
        ref = parse_media_part(await read_json(request), "body")
        pixels = await asyncio.to_thread(lambda: service.media.pixels(ref, service.media.read(ref)))
        return {"kind": ref.kind, "frames": await asyncio.to_thread(preview_frames, service.processor, pixels)}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        authorize(request)
        chat = parse_chat_request(await read_json(request), service.model_id)
        prepared = await asyncio.to_thread(service.prepare, chat)
        ticket, events = service.submit(prepared)
        reply = Reply(service, chat, prepared, ticket, events)
        if chat.stream:
            return _Served(reply.chunks(), ticket)
        try:
            return JSONResponse(await reply.whole(request))
        finally:
            ticket.cancel()

    return app


class Reply:
    """One answer in the making: engine events in, OpenAI's completion object or chunks out."""

    def __init__(self, service: ChatService, chat: ChatRequest, request: engine_lib.Request,
                 ticket: engine_lib.Ticket, events: asyncio.Queue):
        self.chat, self.ticket, self.events = chat, ticket, events
        self.text = AnswerText(service.processor, chat.stop)
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), service.model_id
        self.prompt_tokens, self.completion_tokens = len(request.prompt_ids), 0

    async def pieces(self, next_event):
        """(text piece, finish reason or None) as tokens arrive; the last has the reason."""
        while True:
            event = await next_event()
            if event.token is None:
                error = final_event_error(event)
                if error is not None:
                    raise error
                yield self.text.finish(), event.finish_reason
                return
            self.completion_tokens += 1
            piece = self.text.add(event.token)
            if self.text.stopped:
                self.ticket.cancel()
                yield piece + self.text.finish(), "stop"
                return
            if piece:
                yield piece, None

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    async def whole(self, request: Request) -> dict:
        async def next_event():
            while True:
                try:
                    return await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_SECONDS)
                except TimeoutError:
                    if await request.is_disconnected():  # nobody reads the answer: stop making it
                        raise APIError(499, "the client closed the request") from None

        content, finish = "", None
        async for piece, finish in self.pieces(next_event):
            content += piece
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                             "finish_reason": finish}],
                "usage": self.usage()}

    def chunk(self, delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if usage is not None:
            body |= {"choices": [], "usage": usage}
        return f"data: {json.dumps(body)}\n\n"

    async def chunks(self):
        """Server-sent events as OpenAI streams them: the role, the text pieces, the finish reason, [DONE]."""
        yield self.chunk({"role": "assistant", "content": ""})
        try:
            async for piece, finish in self.pieces(self.events.get):
                if piece:
                    yield self.chunk({"content": piece})
                if finish is not None:
                    yield self.chunk({}, finish)
        except APIError as error:
            yield f"data: {json.dumps(error.body())}\n\n"
        else:
            if self.chat.include_usage:
                yield self.chunk({}, usage=self.usage())
        yield "data: [DONE]\n\n"


def build_service(model, processor: Processor, *, model_id: str, template: str = "llava_v1", max_batch: int = 16,
                  max_length: int | None = None, media_root: str | None = None, max_prefixes: int = 4) -> ChatService:
    """An engine over `model` with a feature cache keyed as the media loader keys media, and the service around it."""
    max_length = max_length or model.config.text_config.max_position_embeddings
    cache = FeatureCache(model, fingerprint=preprocessing_fingerprint(processor))
    engine = engine_lib.Engine(model, max_batch=max_batch, max_length=max_length, feature_cache=cache,
                               max_prefixes=max_prefixes)
    return ChatService(engine, processor, model_id=model_id, template=template, max_length=max_length,
                       media_root=media_root)
