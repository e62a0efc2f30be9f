"""Our checkpoint format: the NNX parameter state as an Orbax pytree (nested dict of arrays).

Saving takes `Streamed` leaves: each is produced one slice (one stacked layer) at a time and written
to its own Orbax/tensorstore chunk, one slice in flight, so a 7B conversion never holds the model
in memory. That is a custom Orbax `TypeHandler` (its public `serialize`, with the tensorstore spec
from `type_handlers.get_json_tspec_write`); on disk the leaves are ordinary Orbax numpy arrays, so
restoring needs no custom handler, and restores straight onto target shardings.
"""

from __future__ import annotations

import os
from typing import Callable, Iterator, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from etils import epath
from orbax.checkpoint import type_handlers

from vllava_jax.checkpoint.streamed import Path, Streamed, is_stacked
from vllava_jax.errors import CheckpointError


class _StreamingHandler(type_handlers.NumpyHandler):
    """Writes `Streamed` leaves slice by slice, one leaf at a time; on disk they are plain numpy arrays
    (so reading them back is NumpyHandler's own `deserialize`/`metadata`)."""

    def __init__(self, on_bytes: Callable[[int], None]):
        super().__init__()
        self._on_bytes = on_bytes

    async def serialize(self, values: Sequence[Streamed], infos: Sequence[type_handlers.ParamInfo],
                        args: Sequence[type_handlers.SaveArgs] | None = None) -> list[ocp.future.Future]:
        args = args or [type_handlers.SaveArgs()] * len(values)
        type_handlers.check_input_arguments(values, infos, args)
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(values, infos, args),
                                                                 name="streamed_leaves")]

    async def _write(self, values: Sequence[Streamed], infos: Sequence[type_handlers.ParamInfo],
                     args: Sequence[type_handlers.SaveArgs]) -> None:
        for value, info, arg in zip(values, infos, args):  # in turn: one slice in memory at a time
            await info.await_path_creation()
            use_ocdbt = bool(info.is_ocdbt_checkpoint)
            tspec = type_handlers.get_json_tspec_write(
                info, use_ocdbt=use_ocdbt, global_shape=value.shape, local_shape=value.shape,
                dtype=np.dtype(value.dtype), process_index=jax.process_index() if use_ocdbt else None, arg=arg)
            if value.stacked:  # one chunk per layer: writing layer i never rewrites its neighbours
                tspec["metadata"]["chunks"] = [1, *value.shape[1:]]
            if jax.process_index() != 0:
                continue
            t = await ts.open(ts.Spec(tspec), create=True, open=True, context=info.ts_context)
            for index in value.parts:
                part = np.asarray(value.read(index), dtype=value.dtype)
                await (t[index] if value.stacked else t).write(part)
                self._on_bytes(part.nbytes)


def absolute(directory: epath.PathLike) -> epath.Path:
    """Orbax takes only absolute paths; a user's relative one is made absolute (remote ones already are)."""
    text = str(directory)
    return epath.Path(text if "://" in text else os.path.abspath(text))


def nest(flat: dict[Path, object]) -> dict:
    tree: dict = {}
    for path, leaf in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = leaf
    return tree


def flatten(tree: dict, prefix: Path = ()) -> Iterator[tuple[Path, object]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def save(directory: epath.PathLike, leaves: dict[Path, Streamed], on_bytes: Callable[[int], None] = lambda n: None):
    """Write `leaves` as an Orbax pytree checkpoint at `directory` (which must not exist)."""
    registry = type_handlers.create_type_handler_registry(
        (Streamed, _StreamingHandler(on_bytes)), (jax.Array, type_handlers.ArrayHandler()))
    # uncompressed: weights barely compress, and zstd would be most of a conversion's CPU time
    handler = ocp.PyTreeCheckpointHandler(type_handler_registry=registry, use_compression=False)
    with ocp.Checkpointer(handler) as checkpointer:
        checkpointer.save(absolute(directory), args=ocp.args.PyTreeSave(nest(leaves)))


def _saved(directory: epath.Path) -> dict[Path, object]:
    """Each saved leaf's metadata (shape, dtype), by path."""
    with ocp.PyTreeCheckpointer() as checkpointer:
        try:
            metadata = checkpointer.metadata(absolute(directory)).item_metadata
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(f"{directory}: not a readable Orbax checkpoint ({e})") from None
    if metadata is None:
        raise CheckpointError(f"{directory}: not a readable Orbax checkpoint (its metadata is missing or unreadable); "
                              "convert the source again")
    return dict(flatten(metadata.tree))


def restore(directory: epath.PathLike, targets: dict[Path, jax.ShapeDtypeStruct]) -> dict[Path, jax.Array]:
    """Restore every leaf straight onto its target's shape, dtype and sharding; fails listing what differs."""
    directory = absolute(directory)
    check(directory, {p: tuple(m.shape) for p, m in _saved(directory).items()}, {p: t.shape for p, t in targets.items()})
    restore_args = {p: ocp.ArrayRestoreArgs(dtype=t.dtype, sharding=t.sharding, global_shape=t.shape)
                    for p, t in targets.items()}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(directory, args=ocp.args.PyTreeRestore(
            item=nest(targets), restore_args=nest(restore_args)))
    return dict(flatten(restored))


def check(directory: epath.Path, saved: dict[Path, tuple], wanted: dict[Path, tuple]) -> None:
    """One error listing every missing, unexpected and mis-shaped leaf."""
    name = lambda p: "/".join(p)
    problems = [f"missing: {name(p)}" for p in sorted(set(wanted) - set(saved))]
    problems += [f"unexpected: {name(p)}" for p in sorted(set(saved) - set(wanted))]
    problems += [f"mis-shaped: {name(p)}: {saved[p]}, expected {tuple(wanted[p])}"
                 for p in sorted(set(saved) & set(wanted)) if saved[p] != tuple(wanted[p])]
    if problems:
        raise CheckpointError(f"{directory} does not fit its config.json:\n  " + "\n  ".join(problems))


def leaves(directory: epath.PathLike) -> dict[Path, Streamed]:
    """A saved checkpoint's leaves, each read slice by slice (a layer at a time) when asked."""
    directory = absolute(directory)
    base = str(directory) if "://" in str(directory) else "file://" + str(directory)
    out = {}
    for path, meta in _saved(directory).items():
        spec = {"driver": "zarr", "kvstore": {"driver": "ocdbt", "base": base, "path": ".".join(path)}}
        out[path] = Streamed(tuple(meta.shape), np.dtype(meta.dtype), is_stacked(path),
                             lambda i, spec=spec: ts.open(spec, open=True).result()[() if i is None else i].read().result())
    return out
