"""The trainer's scalars as TensorBoard event files, written by tensorboardX (no TensorFlow needed)."""

from __future__ import annotations

import tensorboardX
from etils import epath


class EventWriter:
    """One event file per run under `directory`; every call is flushed, so a killed run loses nothing logged."""

    def __init__(self, directory: epath.PathLike):
        self._writer = tensorboardX.SummaryWriter(logdir=str(directory))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), global_step=step)
        self._writer.flush()

    def close(self) -> None:
        """Stop the writer's worker thread now: left to tensorboardX's exit hook, stopping it would
        start a thread at interpreter shutdown, which Python 3.12 refuses (a traceback after a run
        that ended in an error)."""
        self._writer.close()
