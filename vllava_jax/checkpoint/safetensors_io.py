"""Read tensors from one or many `.safetensors` files lazily, as numpy memory maps; write them streamed.

Our own reader of the (simple, documented) format: bfloat16 works without torch, and a 7B
checkpoint never has to fit in memory at once; only the tensor being converted is paged in.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Callable

import ml_dtypes
import numpy as np
from etils import epath

from vllava_jax.errors import CheckpointError

_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_header(path: epath.Path) -> tuple[dict, int]:
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CheckpointError(f"{path}: truncated safetensors file (no header)")
        (size,) = struct.unpack("<Q", head)
        raw = f.read(size)
    if len(raw) < size:
        raise CheckpointError(f"{path}: truncated safetensors header ({len(raw)} of {size} bytes)")
    try:
        return json.loads(raw), 8 + size
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable safetensors header ({e})") from None


class SafetensorsReader:
    """Maps tensor name -> lazily read array over every `*.safetensors` file in a directory."""

    def __init__(self, directory: epath.PathLike):
        self.directory = epath.Path(directory)
        files = sorted(self.directory.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.directory}: no *.safetensors files")
        self._entries: dict[str, tuple[epath.Path, int, dict]] = {}
        for path in files:
            header, data_start = _read_header(path)
            data_end = data_start
            for name, info in header.items():
                if name == "__metadata__":
                    continue
                if info.get("dtype") not in _DTYPES:
                    raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
                self._entries[name] = (path, data_start, info)
                data_end = max(data_end, data_start + info["data_offsets"][1])
            length = path.stat().length
            if length < data_end:  # checked up front: a conversion must not fail half-way, in Orbax's threads
                raise CheckpointError(f"{path}: truncated safetensors file ({length} of {data_end} bytes)")

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._entries[name][2]["shape"])

    def read(self, name: str) -> np.ndarray:
        path, data_start, info = self._entries[name]
        begin, end = info["data_offsets"]
        dtype = np.dtype(_DTYPES[info["dtype"]])
        shape = tuple(info["shape"])
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if end - begin != expected:
            raise CheckpointError(f"{path}: tensor {name!r} spans {end - begin} bytes, its shape {shape} needs {expected}")
        if not os.path.exists(str(path)):  # a remote path (gs://): read the bytes instead of mapping
            with path.open("rb") as f:
                f.seek(data_start + begin)
                raw = f.read(expected)
            if len(raw) < expected:
                raise CheckpointError(f"{path}: tensor {name!r} lies past the end of the file")
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
        try:
            array = np.memmap(str(path), dtype=dtype, mode="r", offset=data_start + begin, shape=shape or (1,))
        except ValueError as e:
            raise CheckpointError(f"{path}: tensor {name!r} lies past the end of the file ({e})") from None
        return array.reshape(shape)


_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}


def shard_files(sizes: list[int], max_shard_bytes: int) -> list[int]:
    """Shard number of each tensor: in order, a new shard when the next tensor would overflow this one."""
    shards, current, filled = [], 0, 0
    for size in sizes:
        if filled and filled + size > max_shard_bytes:
            current, filled = current + 1, 0
        shards.append(current)
        filled += size
    return shards


def write_shard(path: epath.Path, tensors: list[tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]],
                on_tensor: Callable[[int], None] = lambda n: None) -> None:
    """Write one `.safetensors` file, producing each tensor only when its bytes are due.

    The header (names, dtypes, shapes, offsets) comes from the declared shapes; a produced tensor
    that does not match its declaration is an internal error.
    """
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, dtype, _ in tensors:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _CODES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape, dtype, produce in tensors:
            array = np.ascontiguousarray(produce(), dtype=dtype)
            assert array.shape == tuple(shape), (name, array.shape, shape)
            f.write(array.reshape(-1).view(np.uint8).data)
            on_tensor(array.nbytes)
