"""Read PyTorch `.bin` checkpoints without ever running their pickle code, one tensor at a time.

`torch.load(weights_only=True)` refuses any pickle that would call something other than tensor
rebuilding, so a malicious file raises instead of executing. `mmap=True` maps the file rather
than reading it; each read reopens its shard and keeps only the one tensor, so at most that
tensor's pages are resident. torch is imported here only, and only when a `.bin` is read.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from etils import epath

from vllava_jax.errors import CheckpointError


def _load(path: epath.Path) -> dict:
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused to unpickle (it holds more than tensors): {e}") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch zip checkpoint (a legacy or truncated file? "
                              f"re-save it with torch.save): {e}") from None
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors (a state_dict)")
    return state


def _to_numpy(tensor) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


class TorchBinReader:
    """Maps tensor name -> array over every `*.bin` file in a directory (the SafetensorsReader interface)."""

    def __init__(self, directory: epath.PathLike):
        self.directory = epath.Path(directory)
        files = sorted(self.directory.glob("*.bin"))
        if not files:
            raise CheckpointError(f"{self.directory}: no *.bin files")
        self._entries: dict[str, tuple[epath.Path, tuple[int, ...]]] = {}
        for path in files:
            for name, tensor in _load(path).items():
                self._entries[name] = (path, tuple(tensor.shape))

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def read(self, name: str) -> np.ndarray:
        path, _ = self._entries[name]
        return _to_numpy(_load(path)[name])
