"""Annotation turns -> the alternating user/assistant texts a template formats.

As the original `preprocess_multimodal`, placeholders are removed from the human turns and the
medium's placeholder is put back once, at the start of the first user turn (the template does
that). A leading gpt turn is dropped (the original does too) and so is a trailing human turn,
which has no answer to learn from.
"""

from __future__ import annotations

from typing import Any

from data_pipelines.bad_data import SkipSample

PLACEHOLDERS = {"image": "<image>", "video": "<video>"}


def normalize_turns(conversations: list[dict[str, Any]], media_kind: str) -> tuple[list[str], list[str]]:
    """(turns alternating user, assistant, ... ending on an assistant answer; media placeholders)."""
    turns = list(conversations)
    if turns and turns[0]["from"] == "gpt":
        turns = turns[1:]
    if not any(t["from"] == "gpt" for t in turns):
        raise SkipSample("no_gpt_turn", "the conversation has no gpt turn")
    for i, turn in enumerate(turns):
        if turn["from"] != ("human", "gpt")[i % 2]:
            raise SkipSample("bad_conversation", f"turn {i} is from {turn['from']!r}; roles must alternate")
    if len(turns) % 2:
        turns = turns[:-1]
    found = {kind: sum(t["value"].count(p) for t in turns[::2]) for kind, p in PLACEHOLDERS.items()}
    for kind, count in found.items():
        if count > (kind == media_kind):
            raise SkipSample("bad_conversation", f"{count} {PLACEHOLDERS[kind]} placeholder(s) but the sample "
                             f"has {'one ' + media_kind if media_kind else 'no medium'}")
    texts = []
    for i, turn in enumerate(turns):
        value = turn["value"]
        if i % 2 == 0 and media_kind:
            value = value.replace(PLACEHOLDERS[media_kind], "").strip()
        texts.append(value)
    return texts, [PLACEHOLDERS[media_kind]] if media_kind else []
