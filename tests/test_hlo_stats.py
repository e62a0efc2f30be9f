"""`hlo_stats` on hand-written HLO: what it counts is fixed here by arithmetic, not by a compiler."""

from __future__ import annotations

from vllava_jax.train import hlo_stats

# A loop of 8 trips over stacked (8, 64, 32) bf16 weights: each trip copies its layer out of the stack
# (a fusion that only slices), and a second fusion reads another layer in place inside a dot.
LOOP = """HloModule layers

%copy_layer (p0: bf16[8,64,32], p1: s32[]) -> bf16[1,64,32] {
  %p0 = bf16[8,64,32]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %zero = s32[] constant(0)
  ROOT %ds = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %p1, %zero, %zero), dynamic_slice_sizes={1,64,32}
}

%read_in_place (p0: bf16[8,64,32], p1: s32[], p2: bf16[4,64]) -> bf16[4,32] {
  %p0 = bf16[8,64,32]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = bf16[4,64]{1,0} parameter(2)
  %zero = s32[] constant(0)
  %ds = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %p1, %zero, %zero), dynamic_slice_sizes={1,64,32}
  %w = bf16[64,32]{1,0} bitcast(%ds)
  ROOT %dot = bf16[4,32]{1,0} dot(%p2, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%body (state: (s32[], bf16[8,64,32], bf16[4,64])) -> (s32[], bf16[8,64,32], bf16[4,64]) {
  %state = (s32[], bf16[8,64,32]{2,1,0}, bf16[4,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %stack = bf16[8,64,32]{2,1,0} get-tuple-element(%state), index=1
  %x = bf16[4,64]{1,0} get-tuple-element(%state), index=2
  %copied = bf16[1,64,32]{2,1,0} fusion(%stack, %i), kind=kLoop, calls=%copy_layer
  %read = bf16[4,32]{1,0} fusion(%stack, %i, %x), kind=kOutput, calls=%read_in_place
  %one = s32[] constant(1)
  %next = s32[] add(%i, %one)
  ROOT %out = (s32[], bf16[8,64,32]{2,1,0}, bf16[4,64]{1,0}) tuple(%next, %stack, %x)
}

%condition (state: (s32[], bf16[8,64,32], bf16[4,64])) -> pred[] {
  %state = (s32[], bf16[8,64,32]{2,1,0}, bf16[4,64]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%state), index=0
  %trips = s32[] constant(8)
  ROOT %more = pred[] compare(%i, %trips), direction=LT
}

ENTRY %main (stack: bf16[8,64,32], x: bf16[4,64]) -> (s32[], bf16[8,64,32], bf16[4,64]) {
  %stack = bf16[8,64,32]{2,1,0} parameter(0)
  %x = bf16[4,64]{1,0} parameter(1)
  %zero = s32[] constant(0)
  %init = (s32[], bf16[8,64,32]{2,1,0}, bf16[4,64]{1,0}) tuple(%zero, %stack, %x)
  ROOT %loop = (s32[], bf16[8,64,32]{2,1,0}, bf16[4,64]{1,0}) while(%init), condition=%condition, body=%body
}
"""


def test_slice_copies_count_fusions_that_only_slice_times_their_trips():
    cost = hlo_stats.Program(LOOP).cost()
    assert cost.slice_copy_bytes == 8 * (64 * 32 * 2)  # one bf16 layer per trip; the in-place read adds nothing
    assert cost.flops == 8 * (2 * 4 * 64 * 32)


def test_hbm_bytes_count_a_sliced_stack_as_its_slices():
    """Per trip: the copying fusion reads one layer (4,096 B) and the index (4), writes the layer;
    the in-place reader reads one layer, the index and x (512), writes (4, 32) (256); the counter's
    add reads two s32 and writes one. Not the whole (8, 64, 32) stack per fusion."""
    per_trip = (4096 + 4 + 4096) + (4096 + 4 + 512 + 256) + 3 * 4
    assert hlo_stats.Program(LOOP).cost().hbm_bytes == 8 * per_trip


# In place: a fusion writes a new layer into a stack (its root a dynamic-update-slice of the stack),
# then a library call (as cuBLAS's, with its scratch workspace) reads that layer through a slice.
IN_PLACE = """HloModule in_place

%write_layer (p0: bf16[8,64,32], p1: bf16[1,64,32], p2: s32[]) -> bf16[8,64,32] {
  %p0 = bf16[8,64,32]{2,1,0} parameter(0)
  %p1 = bf16[1,64,32]{2,1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %zero = s32[] constant(0)
  ROOT %dus = bf16[8,64,32]{2,1,0} dynamic-update-slice(%p0, %p1, %p2, %zero, %zero)
}

%gemm (p0: bf16[8,64,32], p1: s32[], p2: bf16[4,64]) -> (bf16[4,32], s8[1048576]) {
  %p0 = bf16[8,64,32]{2,1,0} parameter(0)
  %p1 = s32[] parameter(1)
  %p2 = bf16[4,64]{1,0} parameter(2)
  %zero = s32[] constant(0)
  %ds = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %p1, %zero, %zero), dynamic_slice_sizes={1,64,32}
  %w = bf16[64,32]{1,0} bitcast(%ds)
  ROOT %call = (bf16[4,32]{1,0}, s8[1048576]{0}) custom-call(%p2, %w), custom_call_target="__cublas$gemm"
}

ENTRY %main (stack: bf16[8,64,32], layer: bf16[1,64,32], i: s32[], x: bf16[4,64]) -> (bf16[4,32], s8[1048576]) {
  %stack = bf16[8,64,32]{2,1,0} parameter(0)
  %layer = bf16[1,64,32]{2,1,0} parameter(1)
  %i = s32[] parameter(2)
  %x = bf16[4,64]{1,0} parameter(3)
  %written = bf16[8,64,32]{2,1,0} fusion(%stack, %layer, %i), kind=kLoop, calls=%write_layer
  ROOT %product = (bf16[4,32]{1,0}, s8[1048576]{0}) fusion(%written, %i, %x), kind=kCustom, calls=%gemm
}
"""


def test_hbm_bytes_of_an_update_in_place_and_of_a_library_call_skip_the_stack_and_the_workspace():
    written = 4096 + 4 + 4096  # reads the layer and the index, writes the layer; the stack stays
    product = 4096 + 4 + 512 + 256  # one layer through its slice, the index, x; the (4, 32) result
    assert hlo_stats.Program(IN_PLACE).cost().hbm_bytes == written + product


KERNELS = """HloModule kernels

ENTRY %main (a: bf16[768,512], b: bf16[512,1024], q: bf16[2,4,384,32]) -> (bf16[768,1024], bf16[2,4,384,32], bf16[2,4,384,32]) {
  %a = bf16[768,512]{1,0} parameter(0)
  %b = bf16[512,1024]{1,0} parameter(1)
  %q = bf16[2,4,384,32]{3,2,1,0} parameter(2)
  %gemm = (bf16[768,1024]{1,0}, s8[4194304]{0}) custom-call(%a, %b), custom_call_target="__cublas$lt$matmul", backend_config={"operation_queue_id":"0","gemm_backend_config":{"selected_algorithm":"0","alpha_real":1,"beta":0,"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]},"epilogue":"DEFAULT"}}
  %product = bf16[768,1024]{1,0} get-tuple-element(%gemm), index=0
  %forward = bf16[2,4,384,32]{3,2,1,0} custom-call(%q), custom_call_target="tpu_custom_call", backend_config={"flag_configs":[],"custom_call_config":{"body":"TUzvUgFN","cost_estimate":{"flops":"156008448","transcendentals":"1179648","bytes_accessed":"4349952"}}}
  %backward = bf16[2,4,384,32]{3,2,1,0} custom-call(%q), custom_call_target="tpu_custom_call", backend_config={"flag_configs":[],"custom_call_config":{"body":"TUzvUgFH"}}
  ROOT %out = (bf16[768,1024]{1,0}, bf16[2,4,384,32]{3,2,1,0}, bf16[2,4,384,32]{3,2,1,0}) tuple(%product, %forward, %backward)
}
"""


def test_flops_of_a_cublas_gemm_and_of_a_pallas_kernel_that_states_its_own():
    gemm = 2 * 768 * 1024 * 512  # the (768 x 512) @ (512 x 1024) product; the workspace is no result
    forward = 156008448  # the kernel's cost_estimate; the backward kernel states none and counts 0
    assert hlo_stats.Program(KERNELS).cost().flops == gemm + forward


def test_loops_and_what_fusions_compute():
    program = hlo_stats.Program(LOOP)
    assert program.loops() == [("main", "body", 8)]
    body = {ins.name: ins for ins in program.computations["body"]}
    assert program.result_opcode(body["copied"]) == "dynamic-slice"
    assert program.result_opcode(body["read"]) == "dot"
    assert program.result_opcode(body["next"]) == "add"


def test_slices_concatenated_are_copies_too():
    """XLA's dot merger feeds two matmuls sharing an input with one whose weights are both layers'
    slices concatenated: a fusion writing that concatenation copies both slices."""
    merged = LOOP.replace("""  ROOT %ds = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %p1, %zero, %zero), dynamic_slice_sizes={1,64,32}
}""", """  %ds = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %p1, %zero, %zero), dynamic_slice_sizes={1,64,32}
  %w = bf16[64,32]{1,0} bitcast(%ds)
  %ds2 = bf16[1,64,32]{2,1,0} dynamic-slice(%p0, %zero, %zero, %zero), dynamic_slice_sizes={1,64,32}
  %w2 = bf16[64,32]{1,0} bitcast(%ds2)
  ROOT %both = bf16[64,64]{1,0} concatenate(%w, %w2), dimensions={1}
}""").replace("%copied = bf16[1,64,32]{2,1,0} fusion", "%copied = bf16[64,64]{1,0} fusion")
    assert "concatenate" in merged and "%copied = bf16[64,64]" in merged
    assert hlo_stats.Program(merged).cost().slice_copy_bytes == 8 * (64 * 64 * 2)
    added = merged.replace("ROOT %both = bf16[64,64]{1,0} concatenate(%w, %w2)",
                           "%sum = bf16[64,32]{1,0} add(%w, %w2)\n  ROOT %both = bf16[64,64]{1,0} concatenate(%w, %sum)")
    assert "add(%w, %w2)" in added
    assert hlo_stats.Program(added).cost().slice_copy_bytes == 0  # arithmetic, not a copy


def test_trip_counts_as_the_gpu_compiler_writes_them():
    """The GPU compiler states a counted loop's trips (`known_trip_count`) and puts a loop's comparison
    in a fusion its condition calls; both give the loop's trips."""
    fused = LOOP.replace("""  %trips = s32[] constant(8)
  ROOT %more = pred[] compare(%i, %trips), direction=LT
}""", """  ROOT %more = pred[] fusion(%i), kind=kLoop, calls=%fused_compare
}

%fused_compare (p0: s32[]) -> pred[] {
  %p0 = s32[] parameter(0)
  %trips = s32[] constant(8)
  ROOT %lt = pred[] compare(%p0, %trips), direction=LT
}""")
    assert "constant(8)" not in fused.split("\n%condition (")[1].split("\n}")[0]
    assert hlo_stats.Program(fused).cost().slice_copy_bytes == 8 * (64 * 32 * 2)
    stated = LOOP.replace("constant(8)", "get-tuple-element(%state), index=0").replace(
        "body=%body", 'body=%body, backend_config={"known_trip_count":{"n":"5"}}')
    assert "constant(8)" not in stated and "known_trip_count" in stated
    assert hlo_stats.Program(stated).cost().slice_copy_bytes == 5 * (64 * 32 * 2)


def test_a_slice_placed_in_another_memory_space_is_a_prefetch_not_a_copy():
    """TPU compilers stage a layer's weights into a core's VMEM (`S(1)` in the layout) before a
    matmul: on-chip, so not device-memory traffic."""
    staged = LOOP.replace("%copied = bf16[1,64,32]{2,1,0} fusion", "%copied = bf16[1,64,32]{2,1,0:S(1)} fusion")
    assert staged != LOOP
    assert hlo_stats.Program(staged).cost().slice_copy_bytes == 0
