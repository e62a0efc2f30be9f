"""LLaVA / Video-LLaVA annotation files: a JSON list (or JSONL) of
`{"id", "image": relpath | "video": relpath | neither, "conversations": [{"from", "value"}, ...]}`.

The whole file is checked on load, so a malformed one fails at startup with the file and entry
index instead of killing a worker hours later. Content problems a sample can have (no gpt turn,
missing media) are left to the transform's skip policy.
"""

from __future__ import annotations

from typing import Any

from etils import epath

from vllava_jax.errors import DataError
from vllava_jax.jsonio import parse_json

MEDIA_KINDS = ("image", "video")
ROLES = ("human", "gpt")


def load_annotations(path: epath.PathLike) -> list[dict[str, Any]]:
    """Entries of a `.json` list or a `.jsonl` file (one object per line), structurally checked."""
    path = epath.Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise DataError(f"{path}: no such annotation file") from None
    if path.suffix == ".jsonl":
        entries = []
        for line_no, line in enumerate(text.splitlines()):
            if line.strip():
                entries.append(parse_json(line, f"{path} line {line_no + 1}", DataError))
    else:
        entries = parse_json(text, str(path), DataError)
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a JSON list of entries, got {type(entries).__name__}")
    for index, entry in enumerate(entries):
        check_entry(entry, f"{path} entry {index}")
    return entries


def check_entry(entry: Any, where: str) -> None:
    if not isinstance(entry, dict):
        raise DataError(f"{where}: expected an object, got {type(entry).__name__}")
    if all(k in entry for k in MEDIA_KINDS):
        raise DataError(f"{where}: has both 'image' and 'video'; one sample carries at most one medium")
    for kind in MEDIA_KINDS:
        if kind in entry and not isinstance(entry[kind], str):
            raise DataError(f"{where}: '{kind}' must be a relative path string, got {entry[kind]!r}")
    turns = entry.get("conversations")
    if not isinstance(turns, list):
        raise DataError(f"{where}: 'conversations' must be a list, got {type(turns).__name__}")
    for t, turn in enumerate(turns):
        if not (isinstance(turn, dict) and turn.get("from") in ROLES and isinstance(turn.get("value"), str)):
            raise DataError(f"{where}: conversations[{t}] must be {{'from': 'human'|'gpt', 'value': str}}, "
                            f"got {turn!r}")


def media_of(entry: dict[str, Any]) -> tuple[str, str]:
    """(kind, relpath) of the entry's medium, ("", "") for a text-only sample."""
    for kind in MEDIA_KINDS:
        if kind in entry:
            return kind, entry[kind]
    return "", ""
