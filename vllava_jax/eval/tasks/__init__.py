"""Benchmarks: each task reads its released annotation files into `Sample`s (with the prompt the
original evaluation script builds) and scores predictions with the official rules.

A sample whose image or video is missing stays in the list with `media=None`: it is reported by
name, gets an empty prediction and counts as wrong, so the denominator is the whole benchmark.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from etils import epath

from vllava_jax import jsonio
from vllava_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class Sample:
    id: str                  # unique within the task; the cache key
    question: str            # the question as the annotation has it
    text: str                # the user turn the model sees, after the media placeholder line
    media_name: str          # the file the annotation names (reported when missing)
    media: str | None        # the file found on disk, None when missing
    answer: Any              # ground truth in the task's own form
    extra: dict = dataclasses.field(default_factory=dict)


class Task(Protocol):
    name: str
    media_kind: str          # "image" or "video"
    template: str            # conversation template the original script uses
    max_new_tokens: int      # the original script's default
    open_ended: bool         # scored by a judge (video QA) rather than a rule

    def load(self, data: epath.Path) -> list[Sample]: ...

    def score(self, records: list[dict]) -> tuple[list[dict], dict]:
        """Per-record verdicts (same order) and the task's metrics."""


def read_json(path: epath.Path, what: str):
    """An eval set's JSON file; `what` says which one it is when it is missing."""
    return jsonio.read_json(path, DataError, missing=f"{what} not found")


def read_jsonl(path: epath.Path, what: str) -> list[dict]:
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            rows.append(jsonio.parse_json(line, f"{path}:{number}", DataError))
    return rows


def field(row: dict, key: str, where: str):
    if not isinstance(row, dict) or row.get(key) is None:
        raise DataError(f"{where}: entry {row!r:.200} has no {key!r} (missing or null)")
    return row[key]


def find_file(data: epath.Path, what: str, names: Sequence[str]) -> epath.Path:
    """The first of `names` that exists in `data`; the error lists them all."""
    for name in names:
        if (data / name).exists():
            return data / name
    raise DataError(f"{data}: no {what} (looked for {', '.join(names)})")


def check_unique(ids: Iterable[str], where: str) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise DataError(f"{where}: question id {i!r} appears more than once")
        seen.add(i)


class MediaFinder:
    """Looks names up in a few folders under the data dir; each folder is listed once, not stat'ed per name."""

    def __init__(self, data: epath.Path, folders: Sequence[str]):
        self.folders = [data / f if f else data for f in folders]
        self._listings: dict[str, set[str]] = {}

    def _names(self, folder: epath.Path) -> set[str]:
        key = str(folder)
        if key not in self._listings:
            self._listings[key] = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        return self._listings[key]

    def find(self, candidates: Sequence[str]) -> str | None:
        for folder in self.folders:
            for name in candidates:
                if "/" in name:
                    if (folder / name).exists():
                        return str(folder / name)
                elif name in self._names(folder):
                    return str(folder / name)
        return None


def registry() -> dict[str, Task]:
    from vllava_jax.eval.tasks import image_qa, pope, scienceqa, video_qa

    tasks = [*video_qa.TASKS, *image_qa.TASKS, pope.PopeTask(), scienceqa.ScienceQATask()]
    return {t.name: t for t in tasks}
