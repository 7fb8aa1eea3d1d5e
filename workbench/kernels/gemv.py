"""A GEMV for decode: y = x @ W^T (+ bias) when x has only a few rows (M = 1..16 tokens).

Why it is memory-bound. A decode step multiplies each weight matrix W [N, K] (bf16, 2 bytes a
value) by one token's activations: 2*N*K FLOPs for 2*N*K bytes, 1 FLOP per byte. An H200 does
~990 bf16 TFLOP/s but reads HBM at ~4-4.8 TB/s, so the multiply-adds are free and the time is
the weight bytes over the bandwidth: qkv_proj (8 MB) should take ~2 us, o_proj (4 MB) ~1 us.
A GEMV is fast exactly when every byte of W is read once, in wide coalesced loads, with enough
loads in flight on every SM to cover the ~600-800 ns of HBM latency.

How this kernel reads W. Each program owns BLOCK_N output rows and a slice of K. W is row-major,
so a row's K values are contiguous: the [BLOCK_N, BLOCK_K] tile is loaded along K, each thread
taking 8 neighbouring bf16 values (one 16-byte load), a warp 512 contiguous bytes. M = 1 keeps
a [BLOCK_N, BLOCK_K] fp32 accumulator of products and sums along K once at the end (no
cross-thread shuffles inside the loop); M = 2..16 uses `tl.dot` on a 16-row tile of x (the
tensor cores are idle most of the time either way: the loads are the work).

Why split-K. A GPU is full when each of its 132 SMs has several programs in flight. o_proj and
down_proj have N = 1,024 rows: with 4 rows a program that is 256 programs, under 2 per SM, and
each walks a long K alone. Splitting K into SPLIT_K slices gives SPLIT_K times as many programs,
each over a shorter slice. The slices' partial sums (fp32) go to a scratch buffer and a second,
tiny kernel adds them in a fixed order, adds the bias and rounds to bf16: deterministic (no
atomics), and graph-safe (the scratch is a fresh torch.empty from the caching allocator, which
CUDA-graph capture supports; nothing needs zeroing, nothing syncs with the host).

Why M <= 16 (MAX_M). Up to 16 rows, one tile of x holds every token, so each weight byte is read
once whatever M is and the kernel stays a pure weight stream. Beyond that the product is a real
(skinny) GEMM with several row tiles of x, which cuBLAS's tensor-core GEMMs already do well:
`linear` falls back to F.linear.

With the pdl switch (USE_PDL, kernels/pdl.py) a program loads its first weight tile, then waits for
the kernel before (gdc_wait), then loads x: the weights are the one input no kernel writes, so
their stream starts under the tail of the kernel before. Off, that branch compiles away. With
EngineConfig.l2_prefetch a program also asks L2 for its share of the next matmul's weights between
that first load and the wait (`_prefetch_l2`, PREFETCH_LINES > 0; optimizations/l2_prefetch.py).

Every call is the registered op `workbench::gemv` (torch.library.custom_op with a fake impl), so
torch.compile treats it as one opaque op with a known output shape, and CUDA graphs capture its
launches like any other kernel. Configs: `CONFIGS` (measured per shape by scripts/sweep_gemv.py),
else `default_config`'s heuristic.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import pdl
from .fixed_point import from_fixed
from .pdl import pdl_wait   # by name, not pdl.wait: torch.compile copies a traced kernel's helpers by name

MAX_M = 16   # more tokens than this: F.linear (see the docstring)
# Triton's CPU interpreter (3.9) returns garbage for a bf16 tl.dot (seen in this project's CPU
# tests): under it the dot's operands go to fp32 first. On the GPU the bf16 dot runs as is.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DOT_FP32 = _INTERPRET


@dataclass(frozen=True)
class GemvConfig:
    block_n: int = 4       # output rows per program
    block_k: int = 512     # K values per loop step (a multiple of 8: 16-byte loads)
    split_k: int = 1       # K slices, each its own program; > 1 adds the reduce kernel
    num_warps: int = 4
    num_stages: int = 1    # software-pipelining depth Triton may use for the loop's loads

    def as_dict(self) -> dict:
        return asdict(self)


# (N, K, "m1" | "m16") -> config, measured by scripts/sweep_gemv.py on an NVIDIA H200
# (2026-12-01, runs/ -> docs/results/gemv-sweep-h200.json), the M = 1 forms of o_proj, gate_up and
# down then chosen inside the engine (all on, PDL: scripts/ab_decode_candidates.py, 2026-12-02,
# docs/results/decode-ab-h200.json). None: cuBLAS was faster for that shape in the sweep, so
# F.linear runs. Shapes not listed use default_config.
CONFIGS: dict[tuple[int, int, str], GemvConfig | None] = {
    # M = 1: ours vs cuBLAS, us per call (sweep, PDL off): qkv 4.20 vs 5.06, o 3.30 vs 12.86,
    # gate_up 5.32 vs 6.02, down 4.03 vs 6.78, lm_head 76.5 vs 82.5
    (4096, 1024, "m1"): GemvConfig(block_n=4, block_k=1024, split_k=1, num_warps=2, num_stages=1),
    (151936, 1024, "m1"): GemvConfig(block_n=8, block_k=1024, split_k=1, num_warps=4, num_stages=2),
    # Under PDL a program loads its first weight tile before it waits for the kernel before: with
    # one tile as wide as K (down: 4,096 > 3,072, masked) its whole weight slice is read early, and
    # two (gate_up: eight) rows a program leave warp slots free for the next kernel to start in.
    # In the engine the GPU time of a step fell 723 -> 686 us (the sweep's bn1 bk1024 / bn4 forms).
    (1024, 2048, "m1"): GemvConfig(block_n=2, block_k=2048, split_k=1, num_warps=4, num_stages=1),
    (6144, 1024, "m1"): GemvConfig(block_n=8, block_k=1024, split_k=1, num_warps=4, num_stages=1),
    (1024, 3072, "m1"): GemvConfig(block_n=2, block_k=4096, split_k=1, num_warps=4, num_stages=1),
    # M = 2..16: cuBLAS's skinny GEMMs won on the wide shapes (qkv 5.47 vs 6.94 us at M = 16,
    # gate_up 6.33 vs 7.77); split-K still wins on the N = 1,024 ones (o 5.76 vs 5.98, down 6.41 vs 7.03)
    (4096, 1024, "m16"): None,
    (6144, 1024, "m16"): None,
    (1024, 2048, "m16"): GemvConfig(block_n=16, block_k=256, split_k=4, num_warps=2, num_stages=3),
    (1024, 3072, "m16"): GemvConfig(block_n=16, block_k=256, split_k=4, num_warps=2, num_stages=3),
}


_NUM_SMS: dict[int, int] = {}   # a plain dict, not lru_cache: torch.compile traces through this


def _num_sms(device_index: int) -> int:
    if device_index not in _NUM_SMS:
        _NUM_SMS[device_index] = torch.cuda.get_device_properties(device_index).multi_processor_count
    return _NUM_SMS[device_index]


def default_config(m: int, n: int, k: int, num_sms: int = 132) -> GemvConfig:
    """Enough programs to give every SM ~4 (split K when N alone is too few), 16-byte loads."""
    block_n, block_k = (4, 512) if m == 1 else (32, 128)
    block_k = min(block_k, triton.next_power_of_2(k))
    programs = triton.cdiv(n, block_n)
    split_k = 1
    while programs * split_k < 4 * num_sms and k // (2 * split_k) >= block_k:
        split_k *= 2
    return GemvConfig(block_n=block_n, block_k=block_k, split_k=split_k, num_warps=4, num_stages=1)


def _bucket(m: int, n: int, k: int) -> tuple[int, int, str]:
    return n, k, "m1" if m == 1 else "m16"


_UNTUNED = object()


def pick_config(m: int, n: int, k: int, device: torch.device) -> GemvConfig | None:
    """The config for x [m, k] @ W [n, k]^T: CONFIGS' measured one, else default_config's
    heuristic; None where the sweep measured cuBLAS faster. One dict lookup: it runs every call."""
    cfg = CONFIGS.get(_bucket(m, n, k), _UNTUNED)
    if cfg is _UNTUNED:
        sms = _num_sms(device.index or 0) if device.type == "cuda" else 132
        return default_config(m, n, k, sms)
    return cfg


def cublas_faster(m: int, n: int, k: int) -> bool:
    """The sweep measured cuBLAS faster than this kernel for the shape (CONFIGS says None)."""
    return _bucket(m, n, k) in CONFIGS and CONFIGS[_bucket(m, n, k)] is None


# What the kernel does to x as it loads it (X_FORM). PLAIN: nothing. The other two fold the op
# before the matmul into it (the fused_decode switch; wrappers in kernels/fused_gemv.py):
#   RMS_NORM  x is (hidden [, residual]): y = RMSNorm(hidden + residual) @ W^T, and the programs
#             of the first N-tile also write the new residual hidden + residual
#   SILU_MUL  x is gate_up [M, 2K]: y = (silu(gate) * up) @ W^T
PLAIN, RMS_NORM, SILU_MUL = 0, 1, 2


@triton.jit
def _residual_sum(x_ptr, res_ptr, toks, kk, x_stride, M, K, HAS_RES: tl.constexpr):
    """x + residual for tokens `toks` [BLOCK_M, 1] and columns `kk` [1, BLOCK_K], rounded to the
    residual's dtype as torch's `x + residual` is, returned in fp32 (residual: contiguous [M, K]).
    x is rounded to that dtype first: a no-op where x has it (every fold today); an fp32 x (a sum
    finished by atomics: decode attention's o_proj fold, a candidate) is rounded where the
    matmul that made it would have rounded its output, and an int64 x (the same sum in fixed
    point, kernels/fixed_point.py) is turned into fp32 before that."""
    mask = (toks < M) & (kk < K)
    s = tl.load(x_ptr + toks * x_stride + kk, mask=mask, other=0)
    if s.dtype == tl.int64:
        s = from_fixed(s)
    if HAS_RES:
        dt = res_ptr.dtype.element_ty
        r = tl.load(res_ptr + toks * K + kk, mask=mask, other=0.0)
        s = (s.to(dt).to(tl.float32) + r.to(tl.float32)).to(dt)
    return s.to(tl.float32)


@triton.jit
def _silu_mul(gate, up, dt: tl.constexpr):
    """silu(gate) * up as torch's unfused forms round it: silu to dt, then the product to dt
    (gate and up: fp32 holding dt values). SILU_MUL's load of x and SILU_OUT's epilogue."""
    return ((gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32) * up).to(dt)


@triton.jit
def _load_x(x_ptr, res_ptr, nw_ptr, res_out_ptr, toks, kk, x_stride, M, K, pid_n,
            X_FORM: tl.constexpr, HAS_RES: tl.constexpr, EVEN_K: tl.constexpr):
    """(the [BLOCK_M, BLOCK_K] tile of the matmul's input at columns kk in x's dtype -- RMS_NORM with a
    residual: the residual's, for an fp32 x -- and its squares in fp32). RMS_NORM: the tile is
    (x + residual) * norm weight, NOT yet divided by the row's rms
    -- that is one number per token, so the kernel applies it to the dot product at the end, and
    no program has to read the whole row before its first weight load."""
    dt = x_ptr.dtype.element_ty
    if EVEN_K:
        mask = toks < M
    else:
        mask = (toks < M) & (kk < K)
    if X_FORM == 1:   # RMS_NORM
        # the norm weight first: loaded after the residual store below, it waited for x's loads
        # (the compiler cannot move a load above a store that may alias it)
        w = tl.load(nw_ptr + kk, mask=kk < K, other=0.0).to(tl.float32)
        s = _residual_sum(x_ptr, res_ptr, toks, kk, x_stride, M, K, HAS_RES)
        if HAS_RES:   # (without a residual, x itself starts the stream: nothing to write -- and
            # rms_norm_gemv passes a 0-element res_out then, so this guard is what keeps the store in bounds)
            if pid_n == 0:   # the programs of the first N-tile write the new residual: each value once
                tl.store(res_out_ptr + toks * K + kk, s.to(res_out_ptr.dtype.element_ty), mask=(toks < M) & (kk < K))
            x = (s * w).to(res_ptr.dtype.element_ty)   # the stream's dtype (x's, but for an fp32 x)
        else:
            x = (s * w).to(dt)
        x_sq = s * s
    elif X_FORM == 2:   # SILU_MUL: gate at columns kk, up K columns further
        gate = tl.load(x_ptr + toks * x_stride + kk, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + toks * x_stride + K + kk, mask=mask, other=0.0).to(tl.float32)
        x = _silu_mul(gate, up, dt)
        x_sq = x   # unused (compiled away)
    else:
        x = tl.load(x_ptr + toks * x_stride + kk, mask=mask, other=0.0)
        x_sq = x   # unused (compiled away)
    return x, x_sq


@triton.jit
def _load_w(w_ptrs, rows, kk, N, K, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
    """The [BLOCK_N, BLOCK_K] weight tile at columns kk."""
    if EVEN_K and EVEN_N:
        w = tl.load(w_ptrs)
    else:
        w = tl.load(w_ptrs, mask=(rows[:, None] < N) & (kk[None, :] < K), other=0.0)
    return w


@triton.jit
def _tile(acc, w, x_ptr, res_ptr, nw_ptr, res_out_ptr, toks, kk, x_stride, M, K, pid_n, X_FORM: tl.constexpr,
          HAS_RES: tl.constexpr, EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, DOT_FP32: tl.constexpr):
    """(acc + the products of weight tile w and x's tile at columns kk, x's squares). M = 1: acc
    is [BLOCK_N, BLOCK_K] products (summed along K once, at the end); else [BLOCK_M, BLOCK_N]."""
    x, x_sq = _load_x(x_ptr, res_ptr, nw_ptr, res_out_ptr, toks[:, None], kk[None, :], x_stride, M, K,
                      pid_n, X_FORM, HAS_RES, EVEN_K)
    if BLOCK_M == 1:
        acc += w.to(tl.float32) * x.to(tl.float32)        # x is [1, BLOCK_K]: broadcast over rows
    elif DOT_FP32:
        acc += tl.dot(x.to(tl.float32), tl.trans(w.to(tl.float32)))
    else:
        acc += tl.dot(x, tl.trans(w))                     # [BLOCK_M, BLOCK_K] @ [BLOCK_K, BLOCK_N]
    return acc, x_sq


@triton.jit
def _prefetch_l2(next_ptr, next_bytes, LINES: tl.constexpr):
    """Ask L2 for this program's share of the next matmul's weights (EngineConfig.l2_prefetch,
    optimizations/l2_prefetch.py): LINES consecutive 128-byte lines, one `prefetch.global.L2` each,
    lines past the end skipped (a predicate, not a clamp: no line asked for twice) -- fire and
    forget, nothing waits for it and no register holds the bytes. next_ptr: those weights as bytes."""
    program = tl.program_id(0) + (tl.program_id(1) + tl.program_id(2) * tl.num_programs(1)) * tl.num_programs(0)
    offs = (program * LINES + tl.arange(0, LINES)).to(tl.int64) * 128
    inside = (offs < next_bytes).to(tl.int32)
    tl.inline_asm_elementwise("{ .reg .pred p; setp.ne.b32 p, $2, 0; @p prefetch.global.L2 [$1]; mov.u32 $0, 0; }",
                              "=r,l,r", [next_ptr + offs, inside], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _prefetch_only_kernel(ptr, nbytes, LINES: tl.constexpr):
    _prefetch_l2(ptr, nbytes, LINES)


def as_bytes(t: torch.Tensor) -> torch.Tensor:
    """`t`'s storage as uint8, what _prefetch_l2 takes: its offsets count bytes (on a bf16 pointer
    each would step 2 bytes: every other line, and as far again past the end)."""
    return t.view(-1).view(torch.uint8)


def prefetch_l2(weight: torch.Tensor, lines_per_program: int = 1024) -> None:
    """Ask L2 for all of `weight`'s bytes, a kernel that does nothing else (l2_prefetch's side-stream
    form: launched on a stream of its own, so no kernel of the step waits for it). 1,024 lines a
    program: 8 prefetches a thread at 4 warps; a 12.6 MB weight is 96 programs."""
    data = as_bytes(weight)
    programs = triton.cdiv(triton.cdiv(data.numel(), 128), lines_per_program)
    _prefetch_only_kernel[(programs,)](data, data.numel(), LINES=lines_per_program, num_warps=4)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, N, K, x_stride, K_SPLIT: tl.constexpr,
                 res_ptr, nw_ptr, res_out_ptr, eps,   # used by X_FORM = RMS_NORM only
                 next_ptr, next_bytes,                # used by PREFETCH_LINES > 0 only
                 X_FORM: tl.constexpr, HAS_RES: tl.constexpr,
                 HAS_BIAS: tl.constexpr, SPLIT: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
                 DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 USE_PDL: tl.constexpr, PREFETCH_LINES: tl.constexpr = 0, SILU_OUT: tl.constexpr = False,
                 add_ptr=None, ADD_RES: tl.constexpr = False):   # ADD_RES only: the residual to add
    pid_n, pid_k = tl.program_id(0), tl.program_id(1)
    if SILU_OUT:   # W is [gate | up]: rows in pairs (gate j, up j), j = this program's outputs
        pair = tl.arange(0, BLOCK_N)
        rows = pid_n * (BLOCK_N // 2) + pair // 2 + (pair % 2) * (N // 2)
    else:
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)      # output features (rows of W)
    cols = tl.arange(0, BLOCK_K)
    toks = tl.arange(0, BLOCK_M)                              # tokens (rows of x)
    if ADD_RES:   # (no split-K: the reduce kernel adds it then) the residual stream at this
        # program's outputs, read first: its writer ran two or more kernels before this one, so
        # under PDL it was complete before this kernel started (kernels/pdl.py): off the chain
        added = tl.load(add_ptr + toks[:, None] * N + rows[None, :], mask=(toks[:, None] < M) & (rows[None, :] < N),
                        other=0.0).to(tl.float32)
    k_start = pid_k * K_SPLIT
    w_ptrs = w_ptr + rows[:, None].to(tl.int64) * K + (k_start + cols)[None, :]   # row-major W: along K
    if X_FORM == 1:   # sum of squares of each token's row, gathered as the loop loads it
        sq = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    if BLOCK_M == 1:
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)   # products; summed along K once, below
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    # The first tile is peeled off the loop when something goes between its weight load and its
    # use: PDL's wait (the weights are the one input no kernel writes, so their load overlaps the
    # kernel before; x, that kernel's output, comes after the wait) and l2_prefetch's requests
    # (after our own first tile: the one this program waits for)
    PEEL: tl.constexpr = USE_PDL or PREFETCH_LINES > 0
    k_first: tl.constexpr = BLOCK_K if PEEL else 0
    if PEEL:
        kk = k_start + cols
        w = _load_w(w_ptrs, rows, kk, N, K, EVEN_K, EVEN_N)
        if PREFETCH_LINES > 0:
            _prefetch_l2(next_ptr, next_bytes, PREFETCH_LINES)
        pdl_wait(USE_PDL)   # (kernels/pdl.py; compiled away when off)
        acc, x_sq = _tile(acc, w, x_ptr, res_ptr, nw_ptr, res_out_ptr, toks, kk, x_stride, M, K, pid_n,
                          X_FORM, HAS_RES, EVEN_K, BLOCK_M, DOT_FP32)
        if X_FORM == 1:
            sq += x_sq
        w_ptrs += BLOCK_K   # the loop below does the other tiles
    else:
        pdl_wait(USE_PDL)   # (USE_PDL is False here: compiled away; a wait on every path, as tests/test_pdl.py asks)
    # K_SPLIT is a constexpr, so the trip count is known: a loop of no tile compiles away (a runtime
    # loop kept the fp32 [BLOCK_N, BLOCK_K] tile live across it: 2-2.5x the registers, fewer
    # programs an SM), and up to 4 tiles unroll, so their loads can all be in flight at once
    unroll: tl.constexpr = min(4, max(1, (K_SPLIT - k_first) // BLOCK_K))
    for k in tl.range(k_first, K_SPLIT, BLOCK_K, loop_unroll_factor=unroll):
        kk = k_start + k + cols
        w = _load_w(w_ptrs, rows, kk, N, K, EVEN_K, EVEN_N)
        acc, x_sq = _tile(acc, w, x_ptr, res_ptr, nw_ptr, res_out_ptr, toks, kk, x_stride, M, K, pid_n,
                          X_FORM, HAS_RES, EVEN_K, BLOCK_M, DOT_FP32)
        if X_FORM == 1:
            sq += x_sq
        w_ptrs += BLOCK_K
    if BLOCK_M == 1:
        y = tl.sum(acc, axis=1)[None, :]                       # [1, BLOCK_N]
    else:
        y = acc
    if X_FORM == 1:   # RMSNorm's 1/rms, a per-token scale: (x / rms) . w == (x . w) / rms
        y = y / tl.sqrt(tl.sum(sq, axis=1)[:, None] / K + eps)
    mask = (toks[:, None] < M) & (rows[None, :] < N)
    if SPLIT:   # fp32 partial sums of this K slice: the reduce kernel finishes the job
        tl.store(out_ptr + (pid_k * M + toks[:, None]) * N + rows[None, :], y, mask=mask)
    else:
        if HAS_BIAS:
            y += tl.load(b_ptr + rows, mask=rows < N, other=0.0).to(tl.float32)[None, :]
        dt = out_ptr.dtype.element_ty
        if SILU_OUT:   # out [M, N / 2] = silu(gate) * up, each rounded to dt first as gate_up's output is
            gate, up = tl.split(tl.reshape(y.to(dt).to(tl.float32), (BLOCK_M, BLOCK_N // 2, 2)))
            j = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
            tl.store(out_ptr + toks[:, None] * (N // 2) + j[None, :], _silu_mul(gate, up, dt),
                     mask=(toks[:, None] < M) & (j[None, :] < N // 2))
        elif ADD_RES:   # as torch's `linear(x) + residual`: the product rounded to dt, then the sum
            tl.store(out_ptr + toks[:, None] * N + rows[None, :], (y.to(dt).to(tl.float32) + added).to(dt), mask=mask)
        else:
            tl.store(out_ptr + toks[:, None] * N + rows[None, :], y.to(dt), mask=mask)


@triton.jit
def _splitk_reduce_kernel(part_ptr, b_ptr, out_ptr, MN, N, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                          BLOCK: tl.constexpr, USE_PDL: tl.constexpr, add_ptr=None, ADD_RES: tl.constexpr = False):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < MN
    if ADD_RES:   # written two or more kernels before: before the wait (as _gemv_kernel's)
        added = tl.load(add_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    pdl_wait(USE_PDL)
    y = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):                         # fixed order: deterministic
        y += tl.load(part_ptr + s * MN + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    dt = out_ptr.dtype.element_ty
    if ADD_RES:
        y = y.to(dt).to(tl.float32) + added
    tl.store(out_ptr + offs, y.to(dt), mask=mask)


def prefetch_lines(next_weight: torch.Tensor | None, programs: int, threads: int) -> int:
    """128-byte lines of `next_weight` each of `programs` programs asks L2 for: a power of 2 (a
    constexpr per shape) and at least one a thread (fewer, and Triton's layout has two threads
    issue the same line). 0: no prefetch -- none asked for, an empty one, or Triton's interpreter,
    which has no inline PTX (a prefetch changes no value: the CPU tests lose only the hint)."""
    if next_weight is None or next_weight.numel() == 0 or _INTERPRET:
        return 0
    if not next_weight.is_contiguous():
        raise ValueError(f"prefetch: a contiguous tensor (the next matmul's weight), got strides {next_weight.stride()}")
    lines = triton.cdiv(next_weight.numel() * next_weight.element_size(), 128 * programs)
    return max(triton.next_power_of_2(lines), threads)


def prefetch_args(next_weight: torch.Tensor | None, programs: int, threads: int,
                  unused: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """What a kernel calling `_prefetch_l2` is handed: (next_weight as bytes, their count, lines a
    program: prefetch_lines); with nothing to prefetch, (`unused`, 0, 0) -- a pointer never read."""
    lines = prefetch_lines(next_weight, programs, threads)
    if not lines:
        return unused, 0, 0
    data = as_bytes(next_weight)
    return data, data.numel(), lines


def launch(x, weight, bias, cfg: GemvConfig, out, x_form: int = PLAIN, residual=None, norm_weight=None,
           res_out=None, eps: float = 0.0, prefetch: torch.Tensor | None = None, silu_out: bool = False,
           add: torch.Tensor | None = None, early_trigger: bool = False) -> None:
    """Run the GEMV into `out` [M, N]. x: [M, K] (X_FORM = SILU_MUL: [M, 2K]) with unit stride
    along K; RMS_NORM also takes residual [M, K] or None, norm_weight [K], res_out [M, K] (x + residual,
    written only when there is a residual), eps.
    prefetch: the next matmul's weight (contiguous), which the programs ask L2 for while they run.
    silu_out: weight is [gate | up] ([2I, K]) and `out` [M, I] gets silu(gate) * up (no split-K).
    add: a contiguous [M, N] tensor of x's dtype added to the output (the residual stream, an A/B
    candidate), read before the PDL wait -- by this GEMV, or by its split-K reduce -- so the kernel
    that wrote it must be two or more launches before the one that reads it.
    early_trigger: under PDL, the next kernel is let in before this one waits (kernels/pdl.py says
    when that is safe; an A/B candidate, for o_proj). With split-K the next kernel is the reduce."""
    m, (n, k) = x.shape[0], weight.shape
    block_m = 1 if m == 1 else max(16, triton.next_power_of_2(m))
    if block_m > 1 and cfg.block_n < 16:
        raise ValueError(f"{cfg}: M={m} > 1 uses tl.dot, which needs block_n >= 16")
    if silu_out and (cfg.split_k > 1 or cfg.block_n % 2 or n % 2):
        raise ValueError(f"{cfg}, N={n}: silu_out needs split_k 1, an even block_n and an even N ([gate | up])")
    if add is not None and early_trigger:   # the next kernel may start before our wait, so `add` (read early
        # by the split-K reduce) would have to be three launches old: not worth a rule of its own
        raise ValueError("gemv: early_trigger with add is not supported; use one or the other")
    if add is not None and (silu_out or add.shape != (m, n) or not add.is_contiguous() or add.dtype != x.dtype
                            or add.device != x.device):
        raise ValueError(f"add: a contiguous [{m}, {n}] {x.dtype} tensor on {x.device}, not with silu_out; got "
                         f"{tuple(add.shape)} {add.dtype} on {add.device}, contiguous={add.is_contiguous()}")
    k_split = triton.cdiv(k, cfg.split_k * cfg.block_k) * cfg.block_k   # K values per slice
    split = cfg.split_k > 1
    target = torch.empty((cfg.split_k, m, n), dtype=torch.float32, device=x.device) if split else out
    # silu_out: a program's block_n rows are block_n / 2 (gate, up) pairs, one output each
    outputs, per_program = (n // 2, cfg.block_n // 2) if silu_out else (n, cfg.block_n)
    grid = (triton.cdiv(outputs, per_program), cfg.split_k)
    bias_arg = bias if bias is not None else weight   # never read when HAS_BIAS is False
    res = residual if residual is not None else x     # likewise the RMS_NORM-only pointers
    add_arg = add if add is not None else x           # and the residual to add (ADD_RES only)
    next_bytes, nbytes, lines = prefetch_args(prefetch, grid[0] * grid[1], 32 * cfg.num_warps, x)
    _gemv_kernel[grid](x, weight, bias_arg, target, m, n, k, x.stride(0), k_split,
                       res, norm_weight if norm_weight is not None else x, res_out if res_out is not None else x, eps,
                       next_bytes, nbytes, PREFETCH_LINES=lines,
                       X_FORM=x_form, HAS_RES=residual is not None,
                       HAS_BIAS=bias is not None, SPLIT=split, EVEN_K=k % (cfg.split_k * cfg.block_k) == 0,
                       EVEN_N=outputs % per_program == 0, SILU_OUT=silu_out, DOT_FP32=_DOT_FP32 or weight.dtype == torch.float32, BLOCK_M=block_m, BLOCK_N=cfg.block_n,
                       BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                       add_ptr=add_arg, ADD_RES=add is not None and not split,
                       **pdl.launch_options(early_trigger))
    if split:
        block = 1024
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](target, bias_arg, out, m * n, n, SPLIT_K=cfg.split_k,
                                                            HAS_BIAS=bias is not None, BLOCK=block, num_warps=4,
                                                            add_ptr=add_arg, ADD_RES=add is not None,
                                                            **pdl.launch_options())


@torch.library.custom_op("workbench::gemv", mutates_args=())
def gemv_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, block_n: int, block_k: int,
            split_k: int, num_warps: int, num_stages: int, prefetch: torch.Tensor | None = None,
            add: torch.Tensor | None = None, early_trigger: bool = False) -> torch.Tensor:
    out = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    launch(x, weight, bias, GemvConfig(block_n, block_k, split_k, num_warps, num_stages), out, prefetch=prefetch, add=add,
           early_trigger=early_trigger)
    return out


@gemv_op.register_fake
def _(x, weight, bias, block_n, block_k, split_k, num_warps, num_stages, prefetch=None, add=None, early_trigger=False):
    return x.new_empty((x.shape[0], weight.shape[0]))


def check_config(cfg: GemvConfig) -> GemvConfig:
    if cfg.block_k % 8 or cfg.block_n < 1 or cfg.split_k < 1:
        raise ValueError(f"{cfg}: block_k must be a multiple of 8, block_n and split_k >= 1")
    return cfg


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None, prefetch: torch.Tensor | None = None,
         add: torch.Tensor | None = None, early_trigger: bool = False) -> torch.Tensor:
    """x [M, K] (M <= MAX_M, unit stride along K), weight [N, K] contiguous -> [M, N] in x's dtype.
    prefetch: a contiguous tensor (the next matmul's weight) to pull into L2 meanwhile.
    add: [M, N], contiguous, x's dtype, added in the epilogue (launch says when it may be read: a
    copy made here would be a kernel just before the GEMV, so none is made).
    early_trigger: under PDL, let the next kernel in before this one waits (launch; kernels/pdl.py)."""
    if x.dim() != 2 or x.shape[0] > MAX_M or x.shape[1] != weight.shape[1]:
        raise ValueError(f"gemv: x {tuple(x.shape)} and weight {tuple(weight.shape)}: want x [M <= {MAX_M}, K] "
                         "and weight [N, K]; use linear() for any shape")
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, (n, k) = x.shape[0], weight.shape
    cfg = check_config(config or pick_config(m, n, k, x.device) or default_config(m, n, k))
    return gemv_op(x, weight.contiguous(), bias, *cfg.as_dict().values(), prefetch, add, early_trigger)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           prefetch: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear with the decode GEMV for <= MAX_M tokens; larger batches (prefill), and shapes the
    sweep measured cuBLAS faster on, use F.linear. The decode_gemv switch installs this function.
    prefetch: see gemv (l2_prefetch's next weight; F.linear's path ignores it)."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    cfg = pick_config(rows, *weight.shape, x.device) if 1 <= rows <= MAX_M and weight.is_contiguous() else None
    if cfg is None:
        return F.linear(x, weight, bias)
    return gemv(x.reshape(rows, x.shape[-1]), weight, bias, cfg, prefetch).reshape(*x.shape[:-1], weight.shape[0])
