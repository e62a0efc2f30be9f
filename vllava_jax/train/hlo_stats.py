"""What a compiled program does per chip, read from its optimized HLO text (`compiled.as_text()`).

XLA's `cost_analysis()` counts the body of a loop once, and Video-LLaVA's step is loops (layers
scanned, microbatches accumulated, tokens decoded), so it under-counts by the trip counts. Here
every computation is weighted by how often it runs: a `while` body by its trip count (the integer
bound its condition compares against; the decode loop's is its upper bound, `max_new_tokens`),
a `conditional` by its costliest branch. Counted per chip (the HLO is one chip's program):

- FLOPs of `dot` and `convolution` (2 x multiply-adds), wherever they sit (fusions included), of
  cuBLAS gemms (custom calls with a `gemm_backend_config`), and of kernels that state theirs (a
  Pallas TPU kernel's `cost_estimate`: the flash attention's forward, counted as the reference
  attention it replaces, every score of the L x L matrix). Other kernels are not counted: the
  Pallas flash attention's backward kernels state nothing, nor does cuDNN's attention; where they
  run, the FLOPs fall short of the work done;
- HBM bytes: what every top-level instruction reads and writes (what stays inside a fusion never
  reaches HBM), as XLA models it, but with what a fusion only slices counted as the slices it
  reads (a scanned layer's weights, not their whole stack), an operand it updates in place (its
  root a dynamic-update-slice of it) as the update written, and a library call's scratch
  workspace (the `s8` array cuBLAS and cuDNN calls return last) not at all;
- collectives: all-gather, reduce-scatter (TPU emits it as an all-reduce inside an
  `all-reduce-scatter` fusion), all-reduce, all-to-all, collective-permute, with the size of the
  whole buffer each one moves;
- slice copies: bytes written to device memory by top-level fusions whose result is a slice, or
  slices put side by side (their root a `slice` or `dynamic-slice`, or a `concatenate` of those;
  async `fusion-start`s included): typically a layer's weights copied out of their stack before
  a matmul reads them again, where it could have read them in place, or two weight matrices'
  slices concatenated so that one matmul does the work of two (XLA's dot merger). A result
  placed in another memory space (`S(n)` in its layout, such as a TPU core's VMEM) is a prefetch
  on chip, not counted.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16, "s4": 0.5, "u4": 0.5}
FLOAT_TYPES = ("f16", "bf16", "f32", "f64")
COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY )?%?([\w.\-]+) \((.*)\) -> .* \{$")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([\w.\-]+) = (.*)$")
# opcodes that launch no kernel of their own and move no data
FREE_OPCODES = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "while", "conditional", "call",
                "after-all", "partition-id", "replica-id", "opt-barrier", "all-gather-done", "all-reduce-done",
                "collective-permute-done", "async-done", "copy-done", "fusion-done", "send-done", "recv-done"}


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
    """(dtype, dims) of every array in an HLO shape, tuples flattened."""
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(shape)
            if t in DTYPE_BYTES]


def shape_bytes(shape: str) -> float:
    return sum(DTYPE_BYTES[t] * math.prod(dims) for t, dims in arrays(shape))


@dataclasses.dataclass
class Instruction:
    name: str
    shape: str
    opcode: str
    operands: list[str]
    attributes: str
    literal: str  # the text inside the parentheses (a constant's value)
    root: bool = False  # its computation's result


def _split_instruction(text: str) -> tuple[str, str, str, str]:
    """'shape opcode(operands), attributes' -> its four parts (shapes may be nested tuples)."""
    depth, i = 0, 0
    if text.startswith("("):
        for i, ch in enumerate(text):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                break
        shape, rest = text[: i + 1], text[i + 1:].lstrip()
    else:
        shape, _, rest = text.partition(" ")
    opcode, _, rest = rest.partition("(")
    depth, end = 1, 0
    for end, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            break
    return shape, opcode.strip(), rest[:end], rest[end + 1:]


def parse(hlo: str) -> tuple[dict[str, list[Instruction]], str]:
    """Computations by name (instructions in order) and the entry computation's name."""
    computations: dict[str, list[Instruction]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        header = _HEADER.match(line)
        if header:
            current = computations.setdefault(header.group(2), [])
            entry = header.group(2) if header.group(1) else entry
            continue
        match = _INSTRUCTION.match(line) if current is not None else None
        if match:
            shape, opcode, operands, attributes = _split_instruction(match.group(3))
            names = re.findall(r"%([\w.\-]+)", operands)
            current.append(Instruction(match.group(2), shape, opcode, names, attributes, operands.strip(),
                                       bool(match.group(1))))
    return computations, entry


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    hbm_bytes: float = 0.0
    collectives: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> bytes
    counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> executions
    largest: collections.Counter = dataclasses.field(default_factory=collections.Counter)  # kind -> max bytes
    slice_copy_bytes: float = 0.0

    def add(self, other: Cost, times: float = 1.0) -> None:
        self.flops += other.flops * times
        self.hbm_bytes += other.hbm_bytes * times
        self.slice_copy_bytes += other.slice_copy_bytes * times
        for kind in other.collectives:
            self.collectives[kind] += other.collectives[kind] * times
            self.counts[kind] += other.counts[kind] * times
            self.largest[kind] = max(self.largest[kind], other.largest[kind])


def _called(attributes: str, key: str) -> list[str]:
    match = re.search(key + r"=\{?([^}]*?)\}?(?:,|$)", attributes)
    return re.findall(r"%([\w.\-]+)", match.group(1)) if match else []


def trip_count(loop: Instruction, computations: dict[str, list[Instruction]]) -> int | None:
    """A `while`'s trip count: the one XLA states (`known_trip_count`, as the GPU compiler does), else
    its bound: the positive integer constant its condition (or a fusion it calls, where the GPU
    compiler puts the comparison) compares the counter against."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.attributes)
    if known:
        return int(known.group(1))
    names, bounds = _called(loop.attributes, "condition"), []
    while names:
        for i in computations[names.pop()]:
            if (i.opcode == "constant" and re.fullmatch(r"[su]\d+\[\]", i.shape.split("{")[0])
                    and re.fullmatch(r"\d+", i.literal) and int(i.literal) > 0):
                bounds.append(int(i.literal))
            names.extend(_called(i.attributes, "calls"))
    return max(bounds) if bounds else None


class Program:
    """Per-chip cost of one compiled program's HLO."""

    def __init__(self, hlo: str):
        self.computations, self.entry = parse(hlo)
        self._memo: dict[str, Cost] = {}
        self.unknown_loops = 0
        # computations that run inside a fusion's kernel (nested fusions' included)
        self._fused = {callee for instructions in self.computations.values() for ins in instructions
                       if ins.opcode in ("fusion", "fusion-start") for callee in _called(ins.attributes, "calls")}

    def cost(self, name: str | None = None) -> Cost:
        name = name or self.entry
        if name not in self._memo:
            self._memo[name] = self._cost(name)
        return self._memo[name]

    def _cost(self, name: str) -> Cost:
        instructions = self.computations[name]
        shapes = {i.name: i.shape for i in instructions}
        total = Cost()
        for ins in instructions:
            total.flops += _flops(ins, shapes)
            kind = _collective_kind(ins, name)
            if kind:
                size = _collective_bytes(ins, shapes)
                total.collectives[kind] += size
                total.counts[kind] += 1
                total.largest[kind] = max(total.largest[kind], size)
            top_level = name not in self._fused
            if top_level and ins.opcode not in FREE_OPCODES:
                total.hbm_bytes += self._traffic(ins, shapes)
            if top_level and ins.opcode in ("fusion", "fusion-start") and "S(" not in ins.shape:
                total.slice_copy_bytes += sum(self._sliced_bytes(callee) for callee in _called(ins.attributes, "calls"))
            if ins.opcode == "while":
                body = _called(ins.attributes, "body")
                trips = trip_count(ins, self.computations)
                if trips is None:
                    self.unknown_loops += 1
                total.add(self.cost(body[0]), trips or 1)
            elif ins.opcode == "conditional":
                branches = [self.cost(b) for b in _called(ins.attributes, "branch_computations")]
                if branches:
                    total.add(max(branches, key=lambda c: (c.flops, c.hbm_bytes)))
            else:
                for callee in _called(ins.attributes, "calls"):
                    total.add(self.cost(callee))
        return total

    def _traffic(self, ins: Instruction, shapes: dict[str, str]) -> float:
        """Bytes a top-level instruction reads and writes (the HBM bytes of the module docstring)."""
        operands = [shapes.get(o, "") for o in ins.operands]
        if ins.opcode == "copy-start":  # (destination, source, context): reads the source, writes its copy
            return 2 * sum(map(shape_bytes, operands))
        if ins.opcode == "dynamic-update-slice":  # in place: reads the update and writes it
            return 2 * shape_bytes(operands[1]) + sum(map(shape_bytes, operands[2:]))
        if ins.opcode not in ("fusion", "fusion-start"):
            return _written_bytes(ins, shapes.get) + sum(map(shape_bytes, operands))
        fused = self.computations[_called(ins.attributes, "calls")[0]]
        parameters = {int(i.literal): i for i in fused if i.opcode == "parameter"}
        by_name = {i.name: i for i in fused}
        users = collections.defaultdict(list)
        for i in fused:
            for position, operand in enumerate(i.operands):
                users[operand].append((i, position))
        root = next(i for i in fused if i.root)
        outputs = [by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]
        read = sum(_read_bytes(parameters[index].name, shape_bytes(shape), users, outputs)
                   for index, shape in enumerate(operands) if index in parameters)
        return read + sum(_written_bytes(out, lambda name: by_name[name].shape) for out in outputs)

    def loops(self) -> list[tuple[str, str, int | None]]:
        """(computation, body, trip count) of every `while`, fusions' insides excluded."""
        return [(name, _called(ins.attributes, "body")[0], trip_count(ins, self.computations))
                for name, instructions in self.computations.items() for ins in instructions if ins.opcode == "while"]

    def result_opcode(self, ins: Instruction) -> str:
        """What an instruction computes: a fusion's root opcode, else its own."""
        if ins.opcode != "fusion":
            return ins.opcode
        return next(i for i in self.computations[_called(ins.attributes, "calls")[0]] if i.root).opcode

    def _sliced_bytes(self, fused: str) -> float:
        """The bytes a fusion writes if its result is a slice or slices concatenated, else 0."""
        instructions = {i.name: i for i in self.computations[fused]}
        root = next(i for i in instructions.values() if i.root)

        def is_slice(name: str) -> bool:
            ins = instructions.get(name)
            while ins is not None and ins.opcode in ("bitcast", "reshape", "copy"):
                ins = instructions.get(ins.operands[0])
            return ins is not None and ins.opcode in ("slice", "dynamic-slice")

        if is_slice(root.name) or (root.opcode == "concatenate" and all(is_slice(o) for o in root.operands)):
            return shape_bytes(root.shape)
        return 0.0

    def float_arrays_ending_in(self, sizes: set[int]) -> list[str]:
        """Instructions whose result holds a float array with two trailing dims (n, n), n in `sizes`."""
        return self._arrays_where(lambda ins, computation, dtype, dims: dtype in FLOAT_TYPES and len(dims) >= 2
                                  and dims[-1] == dims[-2] and dims[-1] in sizes)

    def collectives_ending_in(self, dims: tuple[int, ...]) -> list[str]:
        """Collectives whose buffer holds an array whose shape ends in `dims`, whatever its dtype."""
        return self._arrays_where(lambda ins, computation, dtype, shape: _collective_kind(ins, computation) is not None
                                  and tuple(shape[-len(dims):]) == tuple(dims))

    def collectives_holding(self, elements: int) -> list[str]:
        """Collectives whose buffer holds an array of at least `elements` elements, whatever its dtype."""
        return self._arrays_where(lambda ins, computation, dtype, dims: _collective_kind(ins, computation) is not None
                                  and math.prod(dims) >= elements)

    def _arrays_where(self, wanted) -> list[str]:
        """'dtype[dims] opcode in computation (op_name)' for each array of an instruction's result
        that `wanted(instruction, computation, dtype, dims)` picks."""
        found = []
        for computation, instructions in self.computations.items():
            for ins in instructions:
                for dtype, dims in arrays(ins.shape):
                    if wanted(ins, computation, dtype, dims):
                        op = re.search(r'op_name="([^"]*)"', ins.attributes)
                        found.append(f"{dtype}[{','.join(map(str, dims))}] {ins.opcode} in {computation}"
                                     + (f" ({op.group(1)})" if op else ""))
        return found


def _read_bytes(parameter: str, whole: float, users: dict, outputs: list[Instruction]) -> float:
    """Bytes a fusion reads of the operand behind `parameter` (`whole` bytes): the slices it takes
    if it only slices it, nothing if it only updates it in place, else all of it."""
    read, pending = 0.0, [parameter]
    while pending:
        for user, position in users[pending.pop()]:
            if user.opcode == "bitcast":
                pending.append(user.name)
            elif user.opcode in ("slice", "dynamic-slice") and position == 0:
                read += shape_bytes(user.shape)
            elif not (user.opcode == "dynamic-update-slice" and position == 0 and any(user is o for o in outputs)):
                return whole
    return min(read, whole)


def _written_bytes(ins: Instruction, shape_of) -> float:
    """Bytes an instruction's result puts in memory: a dynamic-update-slice writes its update (the
    rest stays where it is), a library call its result without its scratch workspace."""
    if ins.opcode == "dynamic-update-slice":
        return shape_bytes(shape_of(ins.operands[1]))
    if ins.opcode == "custom-call":
        return sum(DTYPE_BYTES[t] * math.prod(dims) for t, dims in arrays(ins.shape) if t != "s8")
    return shape_bytes(ins.shape)


def _collective_kind(ins: Instruction, computation: str) -> str | None:
    base = ins.opcode.removesuffix("-start")
    if base not in COLLECTIVES:
        return None
    if base == "all-reduce" and computation.startswith("all-reduce-scatter"):
        return "reduce-scatter"
    return base


def _collective_bytes(ins: Instruction, shapes: dict[str, str]) -> float:
    """The whole buffer a collective moves: the gathered result, the scattered input, the reduced buffer."""
    if ins.opcode == "all-gather-start":
        return max((DTYPE_BYTES[t] * math.prod(d) for t, d in arrays(ins.shape)), default=0)
    if ins.opcode in ("reduce-scatter", "collective-permute-start"):
        return sum(shape_bytes(shapes.get(o, "")) for o in ins.operands)
    return shape_bytes(ins.shape)


def _dims(attributes: str, key: str) -> list[int]:
    match = re.search(key + r"=\{([0-9,]*)\}", attributes)
    return [int(d) for d in match.group(1).split(",") if d] if match else []


# a Pallas TPU kernel's own count of its work (`pl.CostEstimate`), in its backend_config
_STATED_FLOPS = re.compile(r'"cost_estimate":\{[^}]*?"flops":"?([0-9]+)')
# a cuBLAS gemm's contracting dimensions of its first operand, in its backend_config
_GEMM_CONTRACTING = re.compile(r'"gemm_backend_config":\{.*?"lhs_contracting_dimensions":\[([^\]]*)\]')


def _flops(ins: Instruction, shapes: dict[str, str]) -> float:
    contracting = None
    if ins.opcode == "dot":
        contracting = _dims(ins.attributes, "lhs_contracting_dims")
    elif ins.opcode == "custom-call":
        gemm = _GEMM_CONTRACTING.search(ins.attributes)
        if gemm is None:
            stated = _STATED_FLOPS.search(ins.attributes)
            return float(stated.group(1)) if stated else 0.0
        contracting = [int(d) for d in re.findall(r"[0-9]+", gemm.group(1))]
    if contracting is not None:
        lhs = arrays(shapes.get(ins.operands[0], ""))
        if not lhs:
            return 0.0
        result = arrays(ins.shape)[0][1]  # a library gemm returns its workspace after the product
        return 2.0 * math.prod(result) * math.prod(lhs[0][1][d] for d in contracting)
    if ins.opcode != "convolution":
        return 0.0
    # TPU rewrites dots as convolutions: batch dims become windows with lhs dilation, or a size-1
    # input dim a padded window. An output meets at most ceil(window / dilation) and at most
    # (input size) real input positions per window dim, not the window's size.
    operands = [arrays(shapes.get(o, "")) for o in ins.operands[:2]]
    labels = re.search(r"dim_labels=(\w+)_(\w+)->", ins.attributes)
    if len(operands) < 2 or not all(operands) or not labels:
        return 0.0
    lhs, kernel = operands[0][0][1], operands[1][0][1]
    inputs = math.prod(n for n, label in zip(kernel, labels.group(2)) if label == "i")
    size = re.search(r"size=([0-9x]+)", ins.attributes)
    dilation = re.search(r"lhs_dilate=([0-9x]+)", ins.attributes)
    window = [int(n) for n in size.group(1).split("x")] if size else []
    dilate = [int(n) for n in dilation.group(1).split("x")] if dilation else [1] * len(window)
    spatial = [lhs[labels.group(1).index(str(k))] for k in range(len(window))]
    positions = math.prod(min(-(-w // d), n) for w, d, n in zip(window, dilate, spatial))
    return 2.0 * sum(math.prod(d) for _, d in arrays(ins.shape)) * inputs * positions
