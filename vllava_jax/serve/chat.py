"""An OpenAI chat-completions request body -> the conversation, media and sampling settings it asks for.

The prompt is then built as `python -m vllava_jax.generate` builds it: the conversation template's
turns (user, assistant, user, ...), one `<image>` / `<video>` placeholder per medium put before the
first question unless the text places them itself (then one per medium, exactly), images before
videos (`conversation.media_placeholders`, the rule the CLI follows too). A `system` (or `developer`)
message replaces the template's system prompt. Fields that would change the answer in ways the
server does not implement (tools, n > 1, logprobs, penalties...) are refused rather than ignored.
"""

from __future__ import annotations

import dataclasses
import secrets

from vllava_jax.errors import InputError
from vllava_jax.processing.conversation import MediaWording, Template, media_placeholders
from vllava_jax.serve.api_errors import bad_request
from vllava_jax.serve.media import PART_KINDS, MediaReference

MAX_STOP_STRINGS = 4  # OpenAI's limit
# accepted but without effect on the answer
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls")
# accepted only at the value that means "off"
OFF_VALUES = {"n": (1,), "logprobs": (False,), "top_logprobs": (0,), "presence_penalty": (0, 0.0),
              "frequency_penalty": (0, 0.0), "logit_bias": ({},), "tools": ([],), "tool_choice": ("none",),
              "response_format": ({"type": "text"},)}
SUPPORTED_FIELDS = ("model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
                    "stop", "stream", "stream_options")
PLACEHOLDER_WORDING = MediaWording(text="the text", images="image_url", videos="video_url parts", medium="medium",
                       unplaced="they go before the first question")


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    turns: tuple[str, ...]            # user, assistant, user, ... ending with a user turn
    system: str | None                # replaces the template's system prompt when given
    media: tuple[MediaReference, ...]
    max_tokens: int | None            # None: up to the context
    temperature: float
    top_p: float
    seed: int
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool               # stream_options.include_usage: a last chunk with `usage`

    def prompt(self, template: Template) -> str:
        """The prompt text `generate` builds for these turns and media."""
        if self.system is not None:
            template = dataclasses.replace(template, system=self.system)
        images = sum(1 for m in self.media if m.kind == "image")
        videos = len(self.media) - images
        try:
            placeholders = media_placeholders(self.turns, images, videos, PLACEHOLDER_WORDING)
        except InputError as e:
            raise bad_request(f"messages: {e}", "messages") from None
        return template.prompt(self.turns, placeholders)


def parse_chat_request(body, model_id: str) -> ChatRequest:
    """Check a decoded JSON body; every mistake is a 400 naming the field."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    for field, value in body.items():
        if field in SUPPORTED_FIELDS or field in IGNORED_FIELDS or value is None:
            continue
        if field in OFF_VALUES:
            if value not in OFF_VALUES[field]:
                raise bad_request(f"{field}={value!r} is not supported by this server", field, "unsupported_parameter")
            continue
        raise bad_request(f"unknown or unsupported field {field!r}", field, "unsupported_parameter")
    if body.get("model") != model_id:
        raise bad_request(f"model: {body.get('model')!r} is not served here; GET /v1/models lists {model_id!r}",
                          "model", "model_not_found")
    turns, system, media = _conversation(body.get("messages"))
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        _check_int(max_tokens, "max_tokens", lowest=1)
    temperature = _number(body, "temperature", 1.0)
    if temperature < 0:
        raise bad_request(f"temperature must be 0 (greedy) or positive, got {temperature}", "temperature")
    top_p = _number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise bad_request(f"top_p must be in (0, 1], got {top_p}", "top_p")
    seed = body.get("seed")
    if seed is None:
        seed = secrets.randbits(31)
    _check_int(seed, "seed")
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not set(options) <= {"include_usage"}:
        raise bad_request("stream_options supports only include_usage", "stream_options")
    return ChatRequest(turns, system, media, max_tokens, temperature, top_p, seed, _stop_strings(body.get("stop")),
                       stream, bool(options.get("include_usage")))


def parse_media_part(part, param: str) -> MediaReference:
    """`{"type": "image_url" | "video_url", "<type>": {"url": ...}}` -> a reference to load."""
    if not isinstance(part, dict) or part.get("type") not in PART_KINDS:
        raise bad_request(f"{param}: expected an image_url or video_url part", param)
    kind = part["type"]
    value = part.get(kind)
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str) or not url:
        raise bad_request(f"{param}.{kind}.url: missing; expected {{\"{kind}\": {{\"url\": \"data:...\"}}}}",
                          f"{param}.{kind}")
    return MediaReference(PART_KINDS[kind], url, f"{param}.{kind}")


def _conversation(messages) -> tuple[tuple[str, ...], str | None, tuple[MediaReference, ...]]:
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages must be a non-empty list", "messages")
    system, turns, media = None, [], []
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object with role and content", param)
        role = message.get("role")
        if role in ("system", "developer"):
            if i != 0:
                raise bad_request(f"{param}: a {role} message is allowed only first", param)
            system = _content(message.get("content"), param, media=None)
            continue
        if role not in ("user", "assistant"):
            raise bad_request(f"{param}.role: {role!r} is not supported (user, assistant, system)", f"{param}.role")
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if role != expected:
            raise bad_request(f"{param}: expected a {expected} message (turns alternate user, assistant, ...)", param)
        turns.append(_content(message.get("content"), param, media if role == "user" else None))
    if len(turns) % 2 == 0:
        raise bad_request("messages: the last message must be the user's", "messages")
    return tuple(turns), system, tuple(media)


def _content(content, param: str, media: list | None) -> str:
    """A message's text; its media parts are appended to `media` (None: media not allowed here)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad_request(f"{param}.content must be a string or a list of parts", f"{param}.content")
    texts = []
    for j, part in enumerate(content):
        part_param = f"{param}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad_request(f"{part_param}.text must be a string", part_param)
            texts.append(part["text"])
        elif kind in PART_KINDS and media is not None:
            media.append(parse_media_part(part, part_param))
        else:
            allowed = "text, image_url, video_url" if media is not None else "text"
            raise bad_request(f"{part_param}: part type {kind!r} is not supported here ({allowed})", part_param)
    return "\n".join(texts)


def _check_int(value, name: str, lowest: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or (lowest is not None and value < lowest):
        bound = f" >= {lowest}" if lowest is not None else ""
        raise bad_request(f"{name} must be an integer{bound}, got {value!r}", name)


def _number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise bad_request(f"{name} must be a number, got {value!r}", name)
    return float(value)


def _stop_strings(stop) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad_request(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} of them", "stop")
    return tuple(stops)
