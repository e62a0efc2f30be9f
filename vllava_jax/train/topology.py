"""TPU slices by the names users write (v5p-128, v5e-256, v6e:8x8) and what one chip of each offers.

`devices(slice)` returns compile-only devices of that slice from `libtpu` (`pip install -e
".[tpu-aot]"`), on a machine without a TPU: programs lowered over a mesh of them compile for the
pod as they would on it.

Chip figures (per chip) come from Google's Cloud TPU system-architecture pages
(cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e), read in 2026:

| chip | HBM | bf16 peak | HBM bandwidth | ICI bandwidth (bidirectional) |
| --- | --- | --- | --- | --- |
| v4 | 32 GiB | 275 TFLOP/s | 1,200 GB/s | not on the page: 6 links x 50 GB/s (TPU v4 paper, arXiv 2304.01433) |
| v5e | 16 GB | 197 TFLOP/s | 819 GB/s | 400 GB/s |
| v5p | 95 GiB | 459 TFLOP/s | 2,765 GB/s | 1,200 GB/s |
| v6e | 32 GB | 918 TFLOP/s | 1,638 GB/s | 800 GB/s |

Capacities are compared in GiB (XLA reports bytes); the v5e/v6e pages say "GB" for 16/32 GiB parts.
In slice names, v4-N and v5p-N count TensorCores (two per chip), v5e-N, v5litepod-N and v6e-N chips.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re

from vllava_jax.errors import ConfigError

GIB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
    name: str  # the libtpu topology prefix: "v5p" in "v5p:4x4x4"
    hbm_bytes: float
    peak_flops: float  # dense bf16 FLOP/s
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s, bidirectional, all links of one chip
    cores_per_chip_in_name: int  # v5p-128 names 128 TensorCores = 64 chips
    dims: int  # 3D torus (v4, v5p) or 2D (v5e, v6e)


CHIPS = {
    "v4": Chip("v4", 32 * GIB, 275e12, 1200e9, 300e9, 2, 3),
    "v5e": Chip("v5e", 16 * GIB, 197e12, 819e9, 400e9, 1, 2),
    "v5p": Chip("v5p", 95 * GIB, 459e12, 2765e9, 1200e9, 2, 3),
    "v6e": Chip("v6e", 32 * GIB, 918e12, 1638e9, 800e9, 1, 2),
}
ALIASES = {"v5litepod": "v5e"}


@dataclasses.dataclass(frozen=True)
class Slice:
    name: str  # as the user wrote it
    chip: Chip
    shape: tuple[int, ...]  # chips along each torus axis

    @property
    def chips(self) -> int:
        return math.prod(self.shape)

    @property
    def topology_name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"


def _default_shape(chips: int, dims: int) -> tuple[int, ...] | None:
    """The shape Google provisions for a power-of-two chip count: 2x2x1, 2x2x2, 2x2x4, 2x4x4, 4x4x4,
    4x4x8, ... (3D) or 2x2, 2x4, 4x4, 4x8, 8x8, ... (2D); None for other counts."""
    if chips < 4 or chips & (chips - 1):
        return None
    shape = [2, 2] + [1] * (dims - 2)
    while math.prod(shape) < chips:
        smallest = min(shape)
        shape[max(i for i, n in enumerate(shape) if n == smallest)] *= 2
    return tuple(shape)


def parse_slice(name: str) -> Slice:
    """`v5p-128`, `v5e-256`, `v5litepod-16`, `v6e-64`, `v4-32`, or libtpu's `v5p:4x4x4` / `v6e:8x8`."""
    text = name.strip().lower()
    known = ", ".join(sorted(CHIPS))
    explicit = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)+)", text)
    counted = re.fullmatch(r"([a-z0-9]+)-(\d+)", text)
    if not (explicit or counted):
        raise ConfigError(f"--topology {name!r} is not a slice name like v5p-128, v5e-256, v6e-64 or v5p:4x4x4")
    kind = ALIASES.get((explicit or counted).group(1), (explicit or counted).group(1))
    if kind not in CHIPS:
        raise ConfigError(f"--topology {name!r}: unknown TPU generation {kind!r} (known: {known}, v5litepod)")
    chip = CHIPS[kind]
    if explicit:
        shape = tuple(int(n) for n in explicit.group(2).split("x"))
        if len(shape) != chip.dims or 0 in shape:
            raise ConfigError(f"--topology {name!r}: a {kind} slice has {chip.dims} axes, like "
                              f"{'2x2x1' if chip.dims == 3 else '2x2'}")
        return Slice(name, chip, shape)
    count = int(counted.group(2))
    chips, rest = divmod(count, chip.cores_per_chip_in_name)
    shape = None if rest else _default_shape(chips, chip.dims)
    if shape is None:
        unit = "TensorCores (2 per chip)" if chip.cores_per_chip_in_name == 2 else "chips"
        raise ConfigError(f"--topology {name!r}: {kind}-N counts {unit}; give a power-of-two slice of at least 4 "
                          f"chips, or the shape itself (e.g. {kind}:{'4x4x12' if chip.dims == 3 else '8x16'})")
    return Slice(name, chip, shape)


def devices(slice_: Slice):
    """Compile-only devices of the slice (libtpu, no TPU needed); raises ConfigError without libtpu."""
    # libtpu asks a TPU VM's metadata server for its own slice (there is none here) and takes a
    # lockfile meant for processes that own TPU chips (a compile-only client owns none).
    for key, value in (("TPU_SKIP_MDS_QUERY", "1"), ("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TF_CPP_MIN_LOG_LEVEL", "3")):
        os.environ.setdefault(key, value)
    from jax.experimental import topologies

    try:
        import libtpu  # noqa: F401  (only to say what is missing)
    except ImportError:
        raise ConfigError('compiling for a TPU slice needs libtpu: pip install -e ".[tpu-aot]" '
                          "(it installs the libtpu that matches the installed jax)") from None
    chip_config = "megacore" if slice_.chip.cores_per_chip_in_name == 2 else "default"
    try:
        return list(topologies.get_topology_desc(topology_name=slice_.topology_name, platform="tpu",
                                                 chip_config_name=chip_config).devices)
    except Exception as e:  # libtpu raises JaxRuntimeError with its own text
        raise ConfigError(f"--topology {slice_.name!r} ({slice_.topology_name}): libtpu refused it: "
                          f"{str(e).splitlines()[0]}") from None
