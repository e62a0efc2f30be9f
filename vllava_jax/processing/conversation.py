"""Prompt templates, the one place they are defined.

- "llava_v1" / "vicuna_v1": the original project's chat format (LLaVA's `SeparatorStyle.TWO`):
  `SYSTEM USER: q1 ASSISTANT: a1</s>USER: q2 ASSISTANT:`; they differ only in the system prompt
  ("curious human" / "curious user"). Training and video QA use llava_v1, the image benchmarks vicuna_v1.
- "plain": pretraining (LLaVA's `preprocess_plain`): the visual placeholders, directly followed by
  the caption, then "\\n"; no system prompt, no roles, the question is dropped.
- "hf": the prompt style of the transformers model cards: `USER: <video>\\nq1 ASSISTANT: a1 USER: q2 ASSISTANT:`.

The visual placeholders go at the start of the first user turn, one per line, as the original does,
unless the user's text places them itself (`media_placeholders`, the rule the CLI and the server share).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from vllava_jax.errors import InputError
from vllava_jax.processing.processor import IMAGE_TOKEN, VIDEO_TOKEN

VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
# LLaVA's conv_llava_v1 says "human" where conv_vicuna_v1 says "user"; the rest is identical.
LLAVA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                "The assistant gives helpful, detailed, and polite answers to the human's questions.")


@dataclasses.dataclass(frozen=True)
class Template:
    """`system`, then per turn `role + ": " + text + sep` (user turns) or `+ sep2` (assistant turns)."""

    name: str
    system: str
    roles: tuple[str, str]
    sep: str
    sep2: str
    plain: bool = False

    def prompt(self, turns: Sequence[str], media: Sequence[str] = ()) -> str:
        """`turns` alternate user, assistant, user, ...; an odd count ends with the assistant's cue.

        `media` are placeholder strings ("<image>", "<video>") for the first user turn.
        """
        if not turns:
            raise InputError(f"template {self.name!r}: a prompt needs at least one user turn")
        prefix = "".join(m + "\n" for m in media)
        if self.plain:
            if len(turns) > 2:
                raise InputError(f"template 'plain' has one question and one caption, got {len(turns)} turns")
            return "".join(media) + (turns[1] + self.sep if len(turns) == 2 else "")
        out = self.system + self.sep if self.system else ""
        for i, text in enumerate(turns):
            text = prefix + text if i == 0 else text
            out += f"{self.roles[i % 2]}: {text}{self.sep if i % 2 == 0 else self.sep2}"
        if len(turns) % 2:
            out += self.roles[1] + ":"
        return out


_TWO_SEPARATORS = dict(roles=("USER", "ASSISTANT"), sep=" ", sep2="</s>")
TEMPLATES = {
    "llava_v1": Template("llava_v1", system=LLAVA_SYSTEM, **_TWO_SEPARATORS),
    "vicuna_v1": Template("vicuna_v1", system=VICUNA_SYSTEM, **_TWO_SEPARATORS),
    "plain": Template("plain", system="", roles=("", ""), sep="\n", sep2="\n", plain=True),
    "hf": Template("hf", system="", roles=("USER", "ASSISTANT"), sep=" ", sep2=" "),
}


@dataclasses.dataclass(frozen=True)
class MediaWording:
    """The caller's own names in `media_placeholders`' error, so each interface speaks in its terms:
    `{text} places ... but {n} {images} and {m} {videos} were given; place one per {medium}, or none
    and {unplaced}`."""

    text: str      # what holds the placeholders: "--prompt", "the text"
    images: str    # how images are given: "--image", "image_url"
    videos: str    # how videos are given: "--video", "video_url parts"
    medium: str    # one of them: "file", "medium"
    unplaced: str  # what becomes of media the text does not place: "they go before the first question"


def media_placeholders(texts: Sequence[str], images: int, videos: int, wording: MediaWording) -> list[str]:
    """The placeholders to put before the first question (`Template.prompt`'s `media`) for `images`
    images and `videos` videos: one each, images first, as the original CLI does; or none when `texts`
    place them themselves. Then they must place exactly one per medium: a partial placement leaves no
    way to tell where the rest belong, so it raises InputError in `wording`'s terms."""
    placed_images = sum(t.count(IMAGE_TOKEN) for t in texts)
    placed_videos = sum(t.count(VIDEO_TOKEN) for t in texts)
    if not placed_images and not placed_videos:
        return [IMAGE_TOKEN] * images + [VIDEO_TOKEN] * videos
    if placed_images != images or placed_videos != videos:
        raise InputError(f"{wording.text} places {placed_images} {IMAGE_TOKEN} and {placed_videos} {VIDEO_TOKEN} "
                         f"placeholders but {images} {wording.images} and {videos} {wording.videos} were given; "
                         f"place one per {wording.medium}, or none and {wording.unplaced}")
    return []


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise InputError(f"unknown conversation template {name!r}; known: {sorted(TEMPLATES)}")
    return TEMPLATES[name]
