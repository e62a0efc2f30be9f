"""Will it fit? Compile the real train step and generation for a TPU slice on this machine, no TPU needed.

    python -m vllava_jax.train.aot --config configs/video_llava_7b_stage2.py --topology v5p-128 \\
        [--global_batch 128] [--gen_batch 8 --prompt_len 2112 --new_tokens 128] [--program train]
        [--config.key=value]

Needs libtpu (`pip install -e ".[tpu-aot]"`). The slice's devices come from libtpu as compile-only
devices; the config's mesh is built over them; the trainer's own step (trainable, remat, accumulation
from the config; `--global_batch` rows per optimizer step, since this runs as one process while
`batch_size` is per process) and `generate`'s prefill + decode loop are lowered on abstract inputs
(no weight is materialized) and compiled by XLA's TPU compiler. Printed per chip: memory against
the chip's HBM with a verdict, FLOPs / HBM bytes / collectives (loops counted by their trip
counts, `train.hlo_stats`), checks for what must never appear at pod scale, and a modelled step
time (`train.roofline`) with the days one epoch of the paper's data takes.

Exit status: 0 when both programs fit and every check passes, 1 when one does not fit or a check
fails, 2 for bad flags or config values (one `error:` line; `--debug` for the traceback).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time

from vllava_jax.sharding import MODEL_AXES

# The paper's training data, one epoch each (Video-LLaVA, arXiv 2311.10122, Sec. 4.1 "Data details";
# the repository's TRAIN_AND_VALIDATE.md names the same four sets: llava_image, valley, llava_image_tune,
# videochatgpt_tune, and its finetune script also reads a text-only nlp_tune.json, not counted here).
PAPER_SAMPLES = {
    "stage1": (558_000 + 702_000, "558k LAION-CC-SBU image-caption pairs + 702k Valley video-caption pairs"),
    "stage2": (665_000 + 100_000, "665k LLaVA-1.5 image instructions + 100k Video-ChatGPT video instructions"),
}
GIB = 1024 ** 3
REPLICATED_SHARE = 0.01  # a leaf holding >= 1% of its group's bytes must not be replicated


def make_flags(argv: list[str]):
    from absl import flags
    from ml_collections import config_flags

    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "a configs/*.py train config (trainable, remat, accum_steps, mesh, "
                                    "max_length, dtypes); override keys with --config.key=value",
                                    flag_values=fv, sys_argv=argv)
    flags.DEFINE_string("topology", None, "TPU slice: v4-N, v5p-N (N TensorCores, 2 per chip), v5e-N / "
                        "v5litepod-N, v6e-N (N chips), or libtpu's form v5p:4x4x4, v6e:8x8", flag_values=fv)
    flags.DEFINE_integer("global_batch", 0, "rows per optimizer step over the whole slice, accumulation included "
                         "(default: the config's global_batch_size, else batch_size x accum_steps)", flag_values=fv)
    flags.DEFINE_integer("gen_batch", 8, "generation: prompts decoded together", flag_values=fv)
    flags.DEFINE_integer("prompt_len", 2112, "generation: prompt tokens per row (one 8-frame video is 2056 of them "
                         "at 224 px)", flag_values=fv)
    flags.DEFINE_integer("new_tokens", 128, "generation: tokens decoded after the prompt", flag_values=fv)
    flags.DEFINE_integer("gen_tensor", 0, "generation mesh's tensor axis (default: the largest of 8, 4, 2, 1 "
                         "dividing the chips and the KV heads); the rest of the chips split the rows", flag_values=fv)
    flags.DEFINE_float("hbm_gib", 0.0, "per-chip memory budget in GiB (default: the chip's HBM)", flag_values=fv)
    flags.DEFINE_enum("program", "both", ["both", "train", "generation"], "which programs to compile", flag_values=fv)
    flags.DEFINE_bool("debug", False, "show tracebacks", flag_values=fv)
    return fv


@dataclasses.dataclass(frozen=True)
class MeshChoice:
    data: int
    fsdp: int
    tensor: int
    note: str


def choose_mesh(mesh_config: dict, chips: int, rows: int, heads: int) -> MeshChoice:
    """The config's mesh over `chips` if its data x fsdp divides the microbatch's `rows`; otherwise the
    chips the rows cannot use go to the tensor axis (which must divide the attention heads)."""
    from vllava_jax.errors import ConfigError

    sizes = {k: mesh_config.get(k, 1) for k in ("data", "fsdp", "tensor")}
    fixed = math.prod(v for v in sizes.values() if v != -1)
    if list(sizes.values()).count(-1) == 1 and chips % fixed == 0:
        sizes[next(k for k, v in sizes.items() if v == -1)] = chips // fixed
    if math.prod(sizes.values()) == chips and rows % (sizes["data"] * sizes["fsdp"]) == 0:
        return MeshChoice(sizes["data"], sizes["fsdp"], sizes["tensor"], "the config's mesh")
    for tensor in (t for t in range(1, chips + 1) if chips % t == 0 and heads % t == 0):
        batch_axes = chips // tensor
        if rows % batch_axes == 0:
            data = sizes["data"] if sizes["data"] > 0 and batch_axes % sizes["data"] == 0 else 1
            return MeshChoice(data, batch_axes // data, tensor,
                              f"the config's mesh {mesh_config} cannot split {rows} rows over {chips} chips; "
                              f"the chips the rows cannot use go to tensor")
    raise ConfigError(f"no mesh of {chips} chips splits {rows} rows per microbatch: data x fsdp must divide the rows "
                      f"and tensor (the rest of the chips) the {heads} attention heads; change --global_batch or "
                      "--config.accum_steps")


def generation_tensor(chips: int, kv_heads: int, requested: int) -> int:
    from vllava_jax.errors import ConfigError

    if requested:
        if chips % requested or kv_heads % requested:
            raise ConfigError(f"--gen_tensor {requested} must divide the {chips} chips and the {kv_heads} KV heads")
        return requested
    return next(t for t in (8, 4, 2, 1) if chips % t == 0 and kv_heads % t == 0)


@dataclasses.dataclass
class Verdict:
    name: str
    total_bytes: float
    problems: list[str]


def memory_lines(compiled, budget: float) -> tuple[list[str], float]:
    m = compiled.memory_analysis()
    extra_outputs = m.output_size_in_bytes - m.alias_size_in_bytes
    total = m.argument_size_in_bytes + extra_outputs + m.temp_size_in_bytes + m.generated_code_size_in_bytes
    rows = [("arguments", m.argument_size_in_bytes), ("outputs not aliased with donated arguments", extra_outputs),
            ("temporaries", m.temp_size_in_bytes), ("generated code", m.generated_code_size_in_bytes),
            ("total", total)]
    lines = [f"  {name:<45} {value / GIB:9.2f} GiB" for name, value in rows]
    margin = budget - total
    lines.append(f"  verdict: {'fits' if margin >= 0 else 'does not fit'} in {budget / GIB:.2f} GiB "
                 f"({'headroom' if margin >= 0 else 'short by'} {abs(margin) / GIB:.2f} GiB)")
    return lines, total


def cost_lines(cost, xla_cost: dict) -> list[str]:
    lines = [f"  FLOPs {cost.flops:.4g}, HBM bytes {cost.hbm_bytes:.4g} (loops x trip counts; XLA's cost_analysis, "
             f"loop bodies once: {xla_cost.get('flops', 0):.4g} FLOPs, {xla_cost.get('bytes accessed', 0):.4g} bytes)"]
    for kind in ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute"):
        if cost.counts[kind]:
            lines.append(f"  {kind:<19} {cost.counts[kind]:8.0f} x, {cost.collectives[kind] / GIB:9.3f} GiB in all, "
                         f"largest {cost.largest[kind] / 2 ** 20:9.1f} MiB")
    return lines


def compile_and_describe(lowered, budget: float, heading: str):
    """Compile, then print per-chip memory (with the verdict against `budget`) and costs under `heading`."""
    from vllava_jax.train import hlo_stats

    began = time.perf_counter()
    compiled = lowered.compile()
    print(f"  compiled in {time.perf_counter() - began:.0f} s")
    lines, total = memory_lines(compiled, budget)
    print("memory per chip:")
    print("\n".join(lines))
    program = hlo_stats.Program(compiled.as_text())
    cost = program.cost()
    print(heading)
    print("\n".join(cost_lines(cost, compiled.cost_analysis() or {})))
    return compiled, program, cost, total




def model_split(mesh) -> int:
    return math.prod(mesh.shape[a] for a in MODEL_AXES)


def unsplit(sharding) -> bool:
    """True when no model axis of size > 1 splits the array: every chip of a model group holds all of it."""
    used = {a for entry in sharding.spec for a in ((entry,) if isinstance(entry, str) else entry or ())}
    return not any(sharding.mesh.shape[a] > 1 for a in used & set(MODEL_AXES))


def replicated(abstract_leaves, sharding_tree, skip=("image_tower", "video_tower")) -> list[str]:
    """Paths of leaves holding >= REPLICATED_SHARE of their group's bytes that no model axis splits.

    Shardings are matched by path: a compiled program leaves out inputs it never reads."""
    import jax

    shardings = {jax.tree_util.keystr(p): s for p, s in flatten(sharding_tree)}
    leaves = [(jax.tree_util.keystr(p), x) for p, x in abstract_leaves
              if not any(name in jax.tree_util.keystr(p) for name in skip)]
    threshold = REPLICATED_SHARE * sum(x.size * x.dtype.itemsize for _, x in leaves)
    return [f"{path} {tuple(x.shape)}" for path, x in leaves
            if x.size * x.dtype.itemsize >= threshold and path in shardings and unsplit(shardings[path])]


def flatten(tree):
    import jax

    return jax.tree_util.tree_flatten_with_path(tree)[0]


def train_report(config, model_config, chip, devices, global_batch, choice: MeshChoice, budget) -> Verdict:
    import jax

    from vllava_jax.sharding import make_mesh
    from vllava_jax.train import flops, partition, programs, roofline
    from vllava_jax.train.step import labelled_head_rows

    accum = config.accum_steps
    rows = global_batch // accum
    text = model_config.text_config
    mesh = make_mesh(choice.data, choice.fsdp, choice.tensor, devices=devices)
    stage = partition.preset_name(config.trainable)
    print(f"train step: {stage} (trains {list(config.trainable)}), global batch {global_batch} = {accum} x {rows} rows x "
          f"{config.max_length} "
          f"tokens (one image and one {model_config.video_tower_config.num_frames}-frame video entry per row), "
          f"remat={config.remat}, params {config.get('param_dtype', 'float32')} / compute "
          f"{config.get('compute_dtype', 'bfloat16')}")
    print(f"  mesh data={choice.data} fsdp={choice.fsdp} tensor={choice.tensor} ({choice.note})")
    lowered, train = programs.lower_train_step(config, model_config, mesh, accum, rows)
    compiled, program, cost, total = compile_and_describe(lowered, budget, "per chip:")

    problems = []
    if model_split(mesh) > 1:  # a data-parallel-only mesh replicates every parameter by choice
        in_state, in_frozen = compiled.input_shardings[0][0], compiled.input_shardings[0][1]
        for name, tree, sharding in (("trainable parameter / optimizer state", train.state, in_state),
                                     ("frozen decoder parameter", train.frozen, in_frozen),
                                     ("updated parameter / optimizer state", train.state, compiled.output_shardings[0])):
            found = replicated(flatten(tree), sharding)
            if found:
                problems.append(f"{len(found)} {name} leaves replicated over fsdp x tensor, e.g. {found[0]}")
    layer_bytes = sum(x.size * 4 for p, x in flatten(train.state.params) + flatten(train.frozen)
                      if "language_model" in jax.tree_util.keystr(p) and "layers" in jax.tree_util.keystr(p))
    layer_bytes /= text.num_hidden_layers
    kind, largest = max(cost.largest.items(), key=lambda item: item[1], default=("", 0))
    if largest > layer_bytes:
        problems.append(f"{'an' if kind[0] == 'a' else 'a'} {kind} of {largest / 2 ** 20:.1f} MiB, more than one decoder layer's parameters in float32 "
                        f"({layer_bytes / 2 ** 20:.1f} MiB): a whole stacked weight, gradient or batch-wide buffer "
                        "moved at once")
    video_tokens = model_config.video_seq_length(model_config.video_tower_config.num_frames)
    for found in program.collectives_holding(rows * video_tokens * text.hidden_size)[:3]:
        problems.append(f"a collective holding a whole microbatch's video features ({rows} rows x {video_tokens} "
                        f"tokens x {text.hidden_size}): rows' media do not stay on their rows' chips: {found}")
    for found in program.collectives_ending_in((config.max_length, text.vocab_size))[:3]:
        problems.append(f"a collective holding a whole row's logits ({config.max_length} positions x vocab "
                        f"{text.vocab_size}): the LM head's rows do not stay on their rows' chips: {found}")
    for found in program.float_arrays_ending_in({config.max_length})[:3]:
        problems.append(f"(L x L) float array, L = max_length {config.max_length}: {found}")
    print_checks(problems, TRAIN_CHECKS)

    estimate = roofline.estimate(cost, chip)
    chips = len(devices)
    # the LM head over the most labelled positions per row the step's fast path takes
    model_flops = flops.step_flops(model_config, config.trainable, global_batch, config.max_length,
                                   model_config.video_tower_config.num_frames,
                                   head_tokens=global_batch * labelled_head_rows(config.max_length), images=1) / chips
    tokens = global_batch * config.max_length
    print(f"modelled step time on {chip.name} (train.roofline: max(compute, HBM) + ICI, stated there; FLOPs at "
          "the chip's peak and bytes at its bandwidth, so the step it gives is optimistic and its MFU high):")
    print(f"  compute {estimate.compute_s:.3f} s, HBM {estimate.memory_s:.3f} s, ICI {estimate.ici_s:.3f} s -> "
          f"step {estimate.step_s:.3f} s ({estimate.bound} bound)")
    print(f"  MFU {model_flops / (estimate.step_s * chip.peak_flops):.1%} (model FLOPs "
          f"{model_flops:.4g} per chip per step, train.flops.step_flops), "
          f"{tokens / estimate.step_s / chips:,.0f} tokens/s per chip")
    if stage in PAPER_SAMPLES:
        samples, source = PAPER_SAMPLES[stage]
        steps = math.ceil(samples / global_batch)
        print(f"  one epoch of the paper's {stage} data ({source}): {steps:,} steps, "
              f"{steps * estimate.step_s / 86400:.2f} days")
    return Verdict("train step", total, problems)


def check_generation_flags(args, model_config) -> None:
    from vllava_jax.errors import ConfigError

    video_tokens = model_config.video_seq_length(model_config.video_tower_config.num_frames)
    if args.prompt_len < video_tokens + 1:
        raise ConfigError(f"--prompt_len {args.prompt_len} cannot hold one video ({video_tokens} tokens) and a question")
    context = model_config.text_config.max_position_embeddings
    if args.prompt_len + args.new_tokens > context:
        raise ConfigError(f"--prompt_len {args.prompt_len} + --new_tokens {args.new_tokens} exceeds the "
                          f"{context}-position context")
    if args.gen_batch < 1 or args.new_tokens < 1:
        raise ConfigError("--gen_batch and --new_tokens must be at least 1")


def generation_report(args, model_config, devices, tensor: int, budget) -> Verdict:
    from vllava_jax.sharding import make_mesh
    from vllava_jax.train import programs

    chips = len(devices)
    mesh = make_mesh(chips // tensor, 1, tensor, devices=devices)
    print(f"\ngeneration: {args.gen_batch} prompts x {args.prompt_len} tokens (one video each) + {args.new_tokens} "
          f"new tokens, greedy, bfloat16; mesh data={chips // tensor} tensor={tensor}")
    lowered = programs.lower_generation(model_config, mesh, args.gen_batch, args.prompt_len, args.new_tokens)
    _, program, _, total = compile_and_describe(lowered, budget,
                                                "per chip (the decode loop counted at its bound, --new_tokens):")
    problems = [f"(L x L) float array: {found}" for found in
                program.float_arrays_ending_in({args.prompt_len, args.prompt_len + args.new_tokens})[:3]]
    print_checks(problems)
    return Verdict("generation", total, problems)


TRAIN_CHECKS = ("no decoder parameter or moment left whole on every chip of an fsdp x tensor group; no collective "
                "larger than one decoder layer or holding a microbatch's video features or a row's logits; no "
                "(L x L) float array")


def print_checks(problems: list[str], checked: str = "no (L x L) float array") -> None:
    print(f"checks ({checked}):")
    print("\n".join(f"  FAILED: {p}" for p in problems) if problems else "  passed")


def run(fv) -> int:
    from vllava_jax.errors import ConfigError
    from vllava_jax.train import topology
    from vllava_jax.train.build import build_model_config
    from vllava_jax.train.data import check_max_length

    if fv.config is None or fv.topology is None:
        raise ConfigError("--config and --topology are required (see --help)")
    config = fv.config
    slice_ = topology.parse_slice(fv.topology)
    model_config = build_model_config(config)
    check_max_length(config, model_config)
    global_batch = fv.global_batch or config.get("global_batch_size") or config.batch_size * config.accum_steps
    if global_batch % config.accum_steps:
        raise ConfigError(f"--global_batch {global_batch} is not a multiple of config.accum_steps {config.accum_steps}")
    choice = choose_mesh(config.mesh.to_dict(), slice_.chips, global_batch // config.accum_steps,
                         model_config.text_config.num_attention_heads)
    tensor = 0
    if fv.program != "train":
        check_generation_flags(fv, model_config)
        tensor = generation_tensor(slice_.chips, model_config.text_config.num_key_value_heads, fv.gen_tensor)
    budget = fv.hbm_gib * GIB if fv.hbm_gib else slice_.chip.hbm_bytes
    devices = topology.devices(slice_)
    print(f"{fv.topology}: {slice_.topology_name}, {slice_.chips} chips of {slice_.chip.name} "
          f"({slice_.chip.hbm_bytes / GIB:.0f} GiB HBM, {slice_.chip.peak_flops / 1e12:.0f} TFLOP/s bf16, "
          f"{slice_.chip.hbm_bandwidth / 1e9:,.0f} GB/s HBM, {slice_.chip.ici_bandwidth / 1e9:,.0f} GB/s ICI); "
          f"budget {budget / GIB:.2f} GiB per chip")
    verdicts = []
    if fv.program != "generation":
        verdicts.append(train_report(config, model_config, slice_.chip, devices, global_batch, choice, budget))
    if fv.program != "train":
        verdicts.append(generation_report(fv, model_config, devices, tensor, budget))
    failed = 0
    for v in verdicts:
        if v.total_bytes > budget:
            print(f"error: the {v.name} needs {v.total_bytes / GIB:.2f} GiB per chip and does not fit in "
                  f"{budget / GIB:.2f} GiB by {(v.total_bytes - budget) / GIB:.2f} GiB", file=sys.stderr)
            failed = 1
        if v.problems:
            print(f"error: the {v.name} failed {len(v.problems)} check(s) (listed above)", file=sys.stderr)
            failed = 1
    if not failed:
        print("summary: " + "; ".join(f"{v.name} {v.total_bytes / GIB:.2f} GiB per chip" for v in verdicts)
              + f", fits in {budget / GIB:.2f} GiB, checks passed")
    return failed


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
        print(__doc__)
        print(make_flags(argv[:1]).get_help())
        return 0
    from absl import flags

    from vllava_jax.errors import VllavaError

    from vllava_jax import cli

    debug = "--debug" in argv
    try:
        fv = make_flags(argv)
        cli.parse_config_flags(lambda: fv(argv), lambda: fv.config, "python -m vllava_jax.train.aot")
        return run(fv)
    except (flags.Error, VllavaError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
