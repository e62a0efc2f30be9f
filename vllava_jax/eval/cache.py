"""The per-question cache that makes a run resumable: an append-only JSON-lines file keyed by `id`.

Each finished question is one line, flushed and fsynced before the next batch starts, so a
killed run loses at most the batch in flight. On reopening, a torn last line (the process died
mid-write) is cut off and rewritten later; ids already present are never written twice.
"""

from __future__ import annotations

import json
import os

from etils import epath

from vllava_jax.errors import DataError


class JsonlCache:
    def __init__(self, path: epath.PathLike):
        self.path = epath.Path(path)
        self.rows: dict[str, dict] = {}
        if not self.path.exists():
            return
        text = self.path.read_text()
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            with open(self.path, "r+b") as f:  # drop the half-written line the kill left
                f.truncate(len(text.encode()))
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{self.path}:{number}: corrupt cache line ({e}); delete the file to start over")
                self.rows[str(row["id"])] = row

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, rows: list[dict]) -> None:
        fresh = [r for r in rows if str(r["id"]) not in self.rows]
        if not fresh:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fresh))
            f.flush()
            os.fsync(f.fileno())
        self.rows.update((str(r["id"]), r) for r in fresh)


def write_atomic(path: epath.Path, text: str) -> None:
    """Readers never see a half-written output file."""
    tmp = path.parent / f".{path.name}.partial"
    tmp.write_text(text)
    tmp.replace(path)


def write_jsonl(path: epath.Path, rows: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
