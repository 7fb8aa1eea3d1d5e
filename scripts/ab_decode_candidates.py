"""A/B candidate changes to the batch-1 decode step inside the engine (all on, PDL on), on the GPU.

    python scripts/ab_decode_candidates.py OUT.json [--rounds 2] [--variants current,gemv-sweep,...]
        [--temperature 0.6]

Why not the microbenchmarks (`measure gemv`, `measure decode-attention`): they time one kernel
alone with PDL off, but in the engine each kernel runs under PDL between others, where what
matters is what it can do before its wait and whether the next one finds room to start early.

  current             as committed
  gemv-sweep          the decode GEMV's M = 1 configs as scripts/sweep_gemv.py chose them alone, PDL
                      off (the default until session 9): o_proj bn1 bk1024 w8 s4, down bn1 bk1024 w4,
                      gate_up bn4 -- today's one-tile forms read the whole weight before the PDL wait
  gemv-half           the layer GEMVs with half their programs (more rows each; 8 warps where a thread
  gemv-quarter        ... and a quarter: would hold over 64 registers of weights); session 18: slower
  gemv-double         twice the programs, the same warps; session 19: slower
  gemv-double-thin    twice the programs, half the warps: today's weight registers a thread; slower
  dattn-last          decode attention merged by its last program (one launch a layer fewer)
  dattn-no-prefetch   decode attention without reading its first K/V tile before the PDL wait
                      (kernels/decode_attention.py, Choice 5)
  dattn-one-split     decode attention in one launch a layer: one split per (sequence, KV head), no
                      merge (at batch 1: 8 programs, each walking all its keys; today's choice,
                      num_splits, sizes them for the widest table: 33 at 4,096 tokens, 132 SMs)
  dattn-8-splits      8 splits: 64 programs, a merge still (at 640 keys, 10 tiles: two a program)
  dattn-4-splits      ... 4 splits: 32 programs, up to three tiles each at 640 keys
  dattn-16-splits     ... 16 splits: 128 programs, one tile each up to 1,024 keys
  dattn-tagged-merge  decode attention's merge polls its head's tagged partials instead of waiting for
                      the whole split kernel (kernels/decode_attention.py, Choice 7; kernels/tagged.py)
  dattn-tagged-m-l-first  the same, each merge program polling its splits' m and l words alone until
                      they are in, then reading the partials' words (m_l_first)
  dattn-o-proj        o_proj inside the attention merge (Choice 8): each merge program multiplies its
                      head's output by a 128-row slice of W_o (read before its wait) and adds it
                      into an fp32 sum the split kernel zeroed; gate_up's folded norm reads that sum
                      (rounded to bf16 first): one kernel and one boundary fewer a layer
  dattn-o-proj-fixed  the same with the sum in int64 fixed point (kernels/fixed_point.py): the same
                      tokens in every run, where the fp32 atomics' order can move a near-tie
  rope-inputs-late    qk_norm_rope_store reading its position, cos/sin, slot and norm weights after
                      its PDL wait (the default until session 10, which measured the early reads
                      672 -> 653 us a step: kernels/qk_norm_rope_store.py)
  graph-rounds        a greedy round of 8 decode steps as one graph replay (EngineConfig.graph_rounds,
                      optimizations/multi_step.py)
  eager-sampling      temperature rows sampled by ~10 eager torch ops, the fused sampler's twin
                      (EngineConfig.fused_sampling=False; the fused kernel pair is the default on a
                      GPU since session 11: 1.09x at T = 0.6); differs from current only when
                      sampling: --variants current,eager-sampling --temperature 0.6
  prefill-own-pool    the prefill graphs captured in a memory pool of their own (session 11 measured
                      the decode step 653 -> 682 us with them sharing the decode graphs' pool: why?)
  sync-rounds         each round of 8 steps read before the next is scheduled: async rounds' twin
                      (EngineConfig.async_rounds=False; async is the default since session 13, which
                      measured 1,404 -> 1,458 tok/s with it here, 3 rounds of 3)
  idle-after-prefill  prefill-six, with the GPU left idle ~35 ms after the prefill replay, as the eager
                      prefill leaves it: if the decode step's +29 us with prefill graphs (682 vs 653
                      us, sessions 11 and 13) comes from the GPU's clocks after a short idle, this
                      variant's decode step takes ~653 us (run with AB_CLOCKS=1: device_check.sh)
  l2-prefetch         each decode GEMV asks L2 for the next matmul's weights while it runs
                      (EngineConfig.l2_prefetch, optimizations/l2_prefetch.py; measured slower, session 15)
  l2-prefetch-2       l2-prefetch handing on the weights two matmuls ahead (more time for them to
                      arrive, more of L2 held: qkv gets gate_up's, o_proj down's, ...)
  side-prefetch-mlp   at each layer's decode attention a prefetch-only kernel on a stream of its own
                      asks L2 for the layer's gate_up and down weights (l2_prefetch.install_side;
                      no kernel of the step issues or waits for it: session 15's lesson)
  side-prefetch-mlp-qkv  the same, and the next layer's qkv weight
  dattn-prefetch-gate-up  each layer's decode attention programs ask L2 for the layer's gate_up weight
                      before their PDL wait (l2_prefetch.install_attention; no stream forked, no
                      kernel added: session 17's side stream without its fork; session 19;
                      measured slower, session 20: 1,442 vs 1,502 tok/s)
  silu-in-down        fused_decode's SiLU-and-mul inside down_proj's GEMV, as it loads x
                      (fused_gemv.silu_mul_linear: each program reads all of gate_up, 12 KB, after
                      its wait), the form until session 20; then measured against SiLU in gate_up's
                      epilogue (the variant gate-up-silu, today's fused_decode): 1,507 -> 1,571 tok/s
  greedy-fused-sampling  greedy rows through the fused sampler's Triton pair (kernels/sample.py, a
                      temperature of 0: the argmax, no noise) instead of torch's argmax (a memset
                      and a reduction: ~12 us a step added after the LM head in session 19's fold);
                      session 20: 1,514 vs 1,507 tok/s, GPU time a step -1.6 us: not taken
  sample-noise-early  kernels/sample.py's pair launched under PDL, its noise made before the wait
                      (noise_early; temperature rows only: --temperature 0.6)
  greedy-sample-early an all-greedy batch through that pair under PDL (the pair as
                      greedy-fused-sampling launches it plainly); launched after the decode graph's
                      replay, so only _row_best can overlap (_chunk_best), not the LM head
  greedy-in-graph     that pair under PDL recorded inside each decode graph after the LM head, the
                      tokens copied out of the replay: no argmax launched after the graph
  graph-sampling      the engine's form of it (EngineConfig.graph_sampling, optimizations/graph_sampling.py):
                      the pair in each decode graph for every row, greedy or temperature (run at
                      --temperature 0 and 0.6)
  graph-sampling-rounds  the same with graph_rounds: a round of 8 steps one replay, temperature rows too
  residual-epilogue   the residual add in the epilogues of o_proj's and down_proj's GEMVs (gemv's
                      `add`, read before their PDL waits: the stream is two or more kernels old
                      there), so qkv's and gate_up's folded norms read one row after their waits,
                      not x and the residual (session 20); session 21: 1,536 vs 1,571 tok/s, GPU
                      time a step +22.7 us (o_proj's and qkv's grew): not taken
  gate-up-early       o_proj's GEMV lets gate_up's be scheduled before it waits (kernels/pdl.py's early
                      trigger on that one boundary: gate_up reads only its weights before its wait),
                      so gate_up's weights stream under the merge and o_proj (session 21; prediction
                      in docs/perf-notes.md). Session 11's trigger on every kernel was slower
  prefill-unused      the prefill graphs captured, never replayed (the prompt runs eagerly): if its
                      decode step takes eager-prefill's ~652 us (session 14: current 683, eager-prefill
                      652, idle-after-prefill 683 at 1,980 MHz throughout), the replay is the cause;
                      if prefill-six's ~683 (current until session 16), having captured them is
  prefill-replayed-once  every prompt run eagerly (as prefill-unused), but each prefill graph replayed
                      once after all six are captured (writing no cache slot): if the decode step is
                      prefill-six's (~680 us, not ~653), one replay anywhere changes the GPU's state for
                      good; if eager-prefill's, it is the replay just before the decode steps
  prefill-freed       the prefill graphs captured, then the graph objects dropped before the first
                      request (prompts eager; their memory stays reserved in the decode graphs' pool,
                      their compiled code in the compiler's cache): session 15 measured TPOT 0.679 ms
                      with them captured, replayed or not, 0.662 with none; ~0.662 here: the live
                      graphs cost the decode step; ~0.679: capturing them (or what it leaves) does
  prefill-one-bucket  one prefill graph captured, 128 tokens (the workload's prompt), not six: if the
                      cost of captured graphs grows with their number, this is nearer ~0.662 ms
                      (session 16: 0.662 ms, 1,502 tok/s, TTFT 1.8 ms; six buckets 0.674-0.679)
  prefill-128-x6      the 128-token prefill graph captured six times, all six kept (the prompts
                      replay the last): session 16 measured one bucket's TPOT 0.662 ms, six buckets'
                      0.674-0.679; ~0.679 here: the number of captured graphs costs, whatever their shapes
  prefill-small       the buckets 16, 32, 64, 128 (the shapes below 128 run the row-limited decode
                      kernels: GEMV, decode attention)
  prefill-large       the buckets 128, 256, 512: with prefill-small, which shapes carry the cost
  prefill-512-only    one prefill graph, 512 tokens (every prompt padded to it): is one graph fast
                      whatever its shape? (session 16: six, four, three buckets and 128 captured
                      six times all gave TPOT ~0.679 ms; 128 alone 0.657-0.663; this 0.663, and
                      the engine's default since: = current)
  prefill-six-keep-caches  the six graphs captured with torch.cuda.graph's own emptying of the
                      allocators' caches (device and pinned host, on every capture's entry) made a
                      no-op: if ~0.663 ms, the emptying costs the later decode steps, not the graphs
  prefill-512-warm-x6 one 512-token graph, then five more eager warm-ups of it, each followed by the
                      same emptying (as five more captures would do, without their graphs): if
                      ~0.679, the warm-ups and emptying are the cost; if ~0.663, the graphs are
  prefill-six         the six prefill graphs 16, 32, ... 512 tokens, the default until session 16
                      (prefill-own-pool, idle-after-prefill, prefill-unused, -replayed-once,
                      -freed, -no-pdl, -first, -own-pools were measured with them, and run so still)
  prefill-two         two prefill graphs, 128 and 256 tokens, in the shared pool
  prefill-own-pools   the six prefill graphs each in a memory pool of its own (not one pool for the
                      six and the decode graphs): if fast, graphs sharing a pool cost the decode step
  prefill-no-pdl      the prefill graphs captured with PDL off (the decode graphs keep it): if the
                      decode step is eager-prefill's, the prefill graph's PDL edges are the cause
                      (few: at 128 tokens only the one-row LM-head GEMV launches with PDL; the
                      row-limited decode kernels and the compiler-traced ones do not)
  prefill-first       the prefill graphs captured before the decode graphs (in a pool of their own):
                      moves what the decode graphs' pool holds; a change says memory placement
  eager-prefill       the prompt's prefill step run eagerly, the prefill graphs' twin
                      (EngineConfig.prefill_graphs=False; graphs are the default since session 11:
                      time to the first token 37.6 -> 1.9 ms); compare ttft_ms and tok/s

(Configs compiled for sm_90a first by scripts/gemv_ptx_audit.py: docs/perf-notes.md, session 8.)
Each variant runs in its own process (torch.compile and the graph capture bake them in), in the
order A B C ... A B C: all on, greedy (--temperature: every variant at that temperature) 128 + 512
tokens, 8 decode steps a round, 3 repeats; a row per run as it goes (JSON rewritten after each),
then the medians per variant, and each later variant's decode-step kernels against the first's
(the JSON keeps every row's step_kernels: [name, us, end] in launch order).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GEMV = {   # variant -> {(N, K, bucket): (block_n, block_k, num_warps, num_stages)}; split_k 1
    "gemv-sweep": {(1024, 2048, "m1"): (1, 1024, 8, 4), (1024, 3072, "m1"): (1, 1024, 4, 1),
                   (6144, 1024, "m1"): (4, 1024, 4, 1)},
    # session 18: a PDL kernel step costs more the more programs it has (python -m workbench measure
    # boundaries): the layer GEMVs with half and a quarter of today's programs (compiled for sm_90a:
    # no spills; warps changed too where a thread would hold over 64 registers of weights)
    "gemv-half": {(4096, 1024, "m1"): (8, 1024, 4, 1), (1024, 2048, "m1"): (4, 2048, 4, 1),
                  (6144, 1024, "m1"): (16, 1024, 8, 1), (1024, 3072, "m1"): (4, 4096, 8, 1)},
    "gemv-quarter": {(4096, 1024, "m1"): (16, 1024, 8, 1), (1024, 2048, "m1"): (8, 2048, 8, 1),
                     (6144, 1024, "m1"): (32, 1024, 8, 1), (1024, 3072, "m1"): (8, 4096, 8, 1)},
    # ... and twice today's programs (half and quarter were slower: the other way), the same warps or half
    "gemv-double": {(4096, 1024, "m1"): (2, 1024, 2, 1), (1024, 2048, "m1"): (1, 2048, 4, 1),
                    (6144, 1024, "m1"): (4, 1024, 4, 1), (1024, 3072, "m1"): (1, 4096, 4, 1)},
    "gemv-double-thin": {(4096, 1024, "m1"): (2, 1024, 1, 1), (1024, 2048, "m1"): (1, 2048, 2, 1),
                         (6144, 1024, "m1"): (4, 1024, 2, 1), (1024, 3072, "m1"): (1, 4096, 2, 1)},
}
KERNEL_ARGS = {   # variant -> (module in workbench.kernels, its wrapper, keyword arguments the wrapper gets)
    "dattn-last": ("decode_attention", "paged_decode_attention", {"merge": "last_program"}),
    "dattn-no-prefetch": ("decode_attention", "paged_decode_attention", {"prefetch_kv": False}),
    "rope-inputs-late": ("qk_norm_rope_store", "qk_norm_rope_store", {"inputs_early": False}),
    "dattn-one-split": ("decode_attention", "paged_decode_attention", {"splits": 1}),
    "dattn-8-splits": ("decode_attention", "paged_decode_attention", {"splits": 8}),
    "dattn-4-splits": ("decode_attention", "paged_decode_attention", {"splits": 4}),
    "dattn-16-splits": ("decode_attention", "paged_decode_attention", {"splits": 16}),
    "dattn-tagged-merge": ("decode_attention", "paged_decode_attention", {"merge": "tagged"}),
    "dattn-tagged-m-l-first": ("decode_attention", "paged_decode_attention", {"merge": "tagged", "m_l_first": True}),
    "sample-noise-early": ("sample", "sample", {"noise_early": True}),
}
ENGINE = {"graph-rounds": {"graph_rounds": True}, "eager-sampling": {"fused_sampling": False},
          "eager-prefill": {"prefill_graphs": False}, "sync-rounds": {"async_rounds": False},
          "async-rounds": {"async_rounds": True},   # EngineConfig fields ("async-rounds": = current since session 13)
          "l2-prefetch": {"l2_prefetch": True},
          "graph-sampling": {"graph_sampling": True}, "graph-sampling-rounds": {"graph_sampling": True, "graph_rounds": True}}
OWN_POOL = ["prefill-own-pool"]   # the prefill graphs in their own memory pool, not the decode graphs'
IDLE = {"idle-after-prefill": 0.035}   # seconds the GPU idles after each prefill replay
PREFILL_ORDER = ["prefill-unused", "prefill-replayed-once", "prefill-freed", "prefill-no-pdl", "prefill-first",
                 "prefill-128-x6", "prefill-own-pools", "prefill-six-keep-caches"]   # where the prefill graphs' +29 us comes from
SIX_GRAPHS = (16, 32, 64, 128, 256, 512)   # the prefill graphs captured by default until session 16
PREFILL_BUCKETS = {   # variant -> EngineConfig.prefill_graph_sizes (the variants above: SIX_GRAPHS, as measured)
    "prefill-six": SIX_GRAPHS, "prefill-one-bucket": (128,), "prefill-small": (16, 32, 64, 128),
    "prefill-large": (128, 256, 512), "prefill-512-only": (512,), "prefill-two": (128, 256), "prefill-128-x6": (128,),
    "prefill-512-warm-x6": (512,)}
L2_AHEAD = {"l2-prefetch-2": 2}   # l2_prefetch on, handing on the weights this many matmuls ahead
SIDE_PREFETCH = {"side-prefetch-mlp": "mlp", "side-prefetch-mlp-qkv": "mlp+qkv"}   # l2_prefetch.SIDE_FORMS
ATTENTION_PREFETCH = ("dattn-prefetch-gate-up",)   # l2_prefetch.install_attention
VARIANTS = ["current", *GEMV, *KERNEL_ARGS, *ENGINE, *OWN_POOL, *IDLE, *PREFILL_ORDER,
            *[v for v in PREFILL_BUCKETS if v not in PREFILL_ORDER], *L2_AHEAD, *SIDE_PREFETCH, *ATTENTION_PREFETCH,
            "silu-in-down", "greedy-fused-sampling", "greedy-sample-early", "greedy-in-graph", "dattn-o-proj",
            "dattn-o-proj-fixed", "residual-epilogue",
            "gate-up-early"]   # (PATCHED, below)


def _silu_in_down() -> None:
    """silu-in-down: where fused_decode folds the MLP at decode, gate_up's GEMV writes gate_up and
    down_proj's GEMV computes silu(gate) * up as it loads it (fused_gemv.silu_mul_linear)."""
    from workbench.kernels.fused_gemv import MAX_M, rms_norm_linear, silu_mul_linear
    from workbench.model.qwen3 import DecoderLayer
    layer_forward = DecoderLayer.forward

    def forward(self, positions, hidden, residual, meta):
        norm, mlp = self.post_attention_layernorm, self.mlp
        if norm.fold is None or not mlp.act.in_gemv or not 1 <= hidden.shape[0] <= MAX_M:
            return layer_forward(self, positions, hidden, residual, meta)   # what the folds would not take
        qkv, residual = self.input_layernorm.then(self.self_attn.qkv_proj, hidden, residual)
        hidden = self.self_attn(positions, qkv, meta)
        up_proj, down = mlp.gate_up_proj, mlp.down_proj   # (prefetch_next: l2_prefetch's, as the old folds passed it)
        gate_up, residual = rms_norm_linear(hidden, residual, norm.weight, norm.eps, up_proj.weight, up_proj.bias,
                                            getattr(up_proj, "prefetch_next", None))
        return silu_mul_linear(gate_up, down.weight, down.bias, getattr(down, "prefetch_next", None)), residual
    DecoderLayer.forward = forward


def _greedy_rows(made: dict, logits):
    """kernels/sample.py's rows for an all-greedy batch of logits' rows: temperatures 0 (float32), and
    seeds and counts it does not read (int64), made once a batch size into `made`."""
    import torch
    n = logits.shape[0]
    if n not in made:
        made[n] = (torch.zeros(n, device=logits.device), torch.zeros(n, dtype=torch.int64, device=logits.device))
    temps, unused = made[n]
    return temps, unused, unused


def _greedy_fused_sampling(noise_early: bool = False) -> None:
    """greedy-fused-sampling: an all-greedy batch sampled by the fused kernels at temperature 0.
    greedy-sample-early (noise_early): the same pair launched under PDL (kernels/sample.py)."""
    from workbench.engine.sampler import Sampler
    from workbench.kernels.sample import sample
    plain, made = Sampler.sample, {}

    def sample_greedy_fused(self, logits, seqs, rows=None):
        if not all(seq.params.greedy for seq in seqs):
            return plain(self, logits, seqs, rows)
        return sample(logits, *_greedy_rows(made, logits), noise_early=noise_early)
    Sampler.sample = sample_greedy_fused


def _greedy_in_graph() -> list:
    """greedy-in-graph: each decode graph also records kernels/sample.py's pair at temperature 0,
    under PDL (noise_early), right after the LM head; an all-greedy step takes its tokens from the
    replay (a copy out: the next replay overwrites the buffer). Today the argmax is launched after
    the replay, where PDL cannot reach across the graph's end."""
    import torch

    from workbench.engine.sampler import Sampler
    from workbench.kernels.sample import sample
    from workbench.optimizations.cuda_graphs import DecodeGraphs
    init, plain = DecodeGraphs.__init__, Sampler.sample
    tokens_of = {}   # a decode graph's logits buffer (its address) -> the tokens that graph samples from it
    made = {}        # _greedy_rows': made at each bucket's warm-up, outside any capture (which would record a memset)

    def init_then_wrap(self, forward_logits, **kwargs):
        def forward_then_greedy(ids, positions, meta):
            logits = forward_logits(ids, positions, meta)
            tokens = sample(logits, *_greedy_rows(made, logits), noise_early=True)
            if torch.cuda.is_current_stream_capturing():   # only a graph's buffers keep their address
                tokens_of[logits.data_ptr()] = tokens
            return logits
        init(self, forward_then_greedy, **kwargs)

    served = []   # one entry a step whose tokens came out of a graph (the GPU test's window)

    def sample_greedy_from_graph(self, logits, seqs, rows=None):
        tokens = tokens_of.get(logits.data_ptr())
        if tokens is None or not all(seq.params.greedy for seq in seqs):
            return plain(self, logits, seqs, rows)
        served.append(len(seqs))
        return tokens[:logits.shape[0]].clone()
    DecodeGraphs.__init__, Sampler.sample = init_then_wrap, sample_greedy_from_graph
    return served


def _o_proj_in_the_merge(fixed_point: bool = False) -> None:
    """dattn-o-proj: at decode, with fused_decode's folds and decode attention, o_proj runs inside the
    attention merge (kernels/decode_attention.py, Choice 8): the merge's programs each multiply their
    head's output by a slice of W_o and add into an fp32 sum, which gate_up's folded norm reads. One
    kernel and one boundary fewer a layer. Patched where both the attention's fold and the norm's
    after it are visible: the layer (an fp32 sum must reach a folded norm, which rounds it).
    dattn-o-proj-fixed (fixed_point): the sum in int64 fixed point, the same in every run."""
    import torch

    from workbench.kernels import decode_attention
    from workbench.kernels.fused_gemv import MAX_M
    from workbench.model.qwen3 import DecoderLayer
    from workbench.optimizations.decode_attention import DecodeThenBackend
    layer_forward = DecoderLayer.forward

    @torch.compiler.disable   # as Attention.attend: the kernels and the cache stay out of the compiler
    def attention_and_o_proj(attn, positions, qkv, meta):
        q = attn.fold(attn, positions, *attn.split_heads(qkv), meta)   # normed, rotated; k and v cached
        return decode_attention.paged_decode_attention(q, attn.k_cache, attn.v_cache, meta.seq_lens, meta.block_tables,
                                                       attn.scale, o_proj_weight=attn.o_proj.weight,
                                                       o_proj_bias=attn.o_proj.bias, o_proj_fixed_point=fixed_point)

    def forward(self, positions, hidden, residual, meta):
        attn, norm, mlp = self.self_attn, self.post_attention_layernorm, self.mlp
        if (attn.fold is None or norm.fold is None or not meta.is_decode or not 1 <= hidden.shape[0] <= MAX_M
                or attn.o_proj.tp_size != 1 or not isinstance(attn.backend, DecodeThenBackend)
                or attn.side_prefetch is not None):
            return layer_forward(self, positions, hidden, residual, meta)   # what the fold would not take
        qkv, residual = self.input_layernorm.then(attn.qkv_proj, hidden, residual)
        summed = attention_and_o_proj(attn, positions, qkv, meta)   # fp32 or int64: the norm's fold rounds it
        gated, residual = norm.then(mlp.gate_up_proj, summed, residual, act=mlp.act)
        return mlp.down_proj(gated), residual
    DecoderLayer.forward = forward


def _residual_in_epilogues() -> None:
    """residual-epilogue: at decode, with fused_decode's folds, each layer hands on the whole
    residual stream (hidden + residual, made by o_proj's and down_proj's epilogues) and no separate
    residual: the folded norms get residual=None. The final norm then takes the stream alone."""
    from workbench.kernels.fused_gemv import MAX_M, rms_norm_linear
    from workbench.kernels.gemv import gemv
    from workbench.model.qwen3 import CausalLM, DecoderLayer
    layer_forward = DecoderLayer.forward

    def forward(self, positions, hidden, residual, meta):
        norm1, attn, norm2, mlp = self.input_layernorm, self.self_attn, self.post_attention_layernorm, self.mlp
        if norm1.fold is None or attn.fold is None or not mlp.act.in_gemv or not 1 <= hidden.shape[0] <= MAX_M:
            return layer_forward(self, positions, hidden, residual, meta)   # what the folds would not take
        ahead = lambda linear: getattr(linear, "prefetch_next", None)   # noqa: E731 (l2_prefetch's, if on)
        qkv, residual_stream = rms_norm_linear(hidden, residual, norm1.weight, norm1.eps, attn.qkv_proj.weight,
                                               attn.qkv_proj.bias, ahead(attn.qkv_proj))
        residual_stream = gemv(attn.heads_output(positions, qkv, meta), attn.o_proj.weight, attn.o_proj.bias,
                               prefetch=ahead(attn.o_proj), add=residual_stream)
        gated, _ = rms_norm_linear(residual_stream, None, norm2.weight, norm2.eps, mlp.gate_up_proj.weight,
                                   mlp.gate_up_proj.bias, ahead(mlp.gate_up_proj), silu_out=True)
        return gemv(gated, mlp.down_proj.weight, mlp.down_proj.bias, prefetch=ahead(mlp.down_proj),
                    add=residual_stream), None

    def model_forward(self, input_ids, positions, meta):
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual, meta)
        return self.norm(hidden) if residual is None else self.norm(hidden, residual)[0]
    DecoderLayer.forward, CausalLM.forward = forward, model_forward


def _gate_up_early() -> None:
    """gate-up-early: at decode, with fused_decode's folds, o_proj's GEMV lets its dependent -- gate_up's
    GEMV, the norm folded in -- be scheduled before it waits (kernels/pdl.py's early trigger, on this
    one boundary), so gate_up's programs start loading their weights while the merge and o_proj run."""
    from workbench.kernels.fused_gemv import MAX_M
    from workbench.kernels.gemv import gemv
    from workbench.model.qwen3 import Attention
    attention_forward = Attention.forward

    def forward(self, positions, qkv, meta):   # only o_proj's call changes
        if self.fold is None or not 1 <= qkv.shape[0] <= MAX_M:   # not fused_decode's decode step
            return attention_forward(self, positions, qkv, meta)
        return gemv(self.heads_output(positions, qkv, meta), self.o_proj.weight, self.o_proj.bias,
                    prefetch=getattr(self.o_proj, "prefetch_next", None), early_trigger=True)
    Attention.forward = forward


PATCHED = {"silu-in-down": _silu_in_down,   # variant -> what it patches in before the engine exists
           "greedy-fused-sampling": _greedy_fused_sampling,
           "greedy-sample-early": lambda: _greedy_fused_sampling(noise_early=True),
           "greedy-in-graph": _greedy_in_graph, "dattn-o-proj": _o_proj_in_the_merge,
           "dattn-o-proj-fixed": lambda: _o_proj_in_the_merge(fixed_point=True),
           "residual-epilogue": _residual_in_epilogues,
           "gate-up-early": _gate_up_early}


def _after_l2_prefetch(form: str, arg) -> None:
    """l2_prefetch as the engine says, then l2_prefetch.<form>(model, arg): the runner installs
    l2_prefetch after decode_attention, so a form that needs the attention wrappers finds them."""
    from workbench.optimizations import l2_prefetch
    install_gemv_form, also = l2_prefetch.install, getattr(l2_prefetch, form)

    def install_then(model, on):
        install_gemv_form(model, on)
        also(model, arg)
    l2_prefetch.install = install_then


def child(variant: str, workdir: str, preset: str, new_tokens: int, temperature: float) -> None:
    """One variant, in this process: patch it in before the engine exists, bench, print JSON."""
    import functools
    import importlib

    import torch

    from workbench import Optimizations
    from workbench.engine.runner import ModelRunner
    from workbench.kernels import gemv
    from workbench.measure import bench
    from workbench.model import ModelConfig, random_checkpoint
    from workbench.optimizations.prefill_graphs import PrefillGraphs   # (the prefill variants patch it)
    for key, (bn, bk, warps, stages) in GEMV.get(variant, {}).items():
        gemv.CONFIGS[key] = gemv.GemvConfig(block_n=bn, block_k=bk, split_k=1, num_warps=warps, num_stages=stages)
    if variant in KERNEL_ARGS:   # the engine looks each wrapper up in its module at every call
        name, wrapper, kwargs = KERNEL_ARGS[variant]
        module = importlib.import_module(f"workbench.kernels.{name}")
        setattr(module, wrapper, functools.partial(getattr(module, wrapper), **kwargs))
    if variant in OWN_POOL:
        capture = PrefillGraphs.capture
        PrefillGraphs.capture = lambda self, pool=None, on_captured=None: capture(self, None, on_captured)
    if variant in IDLE:
        import time

        replay = PrefillGraphs.run

        def replay_then_idle(self, *args, **kwargs):
            logits = replay(self, *args, **kwargs)
            torch.cuda.synchronize()
            time.sleep(IDLE[variant])   # nothing queued: the GPU idles, as after an eager prefill's launches
            return logits
        PrefillGraphs.run = replay_then_idle
    if variant in L2_AHEAD:
        from workbench.optimizations import l2_prefetch
        install = l2_prefetch.install
        l2_prefetch.install = lambda model, on: install(model, on, ahead=L2_AHEAD[variant])
    if variant in SIDE_PREFETCH and not torch.cuda.is_available():
        print(f"{variant}: no CUDA, the side stream is not installed (this row runs as current)", file=sys.stderr)
    elif variant in SIDE_PREFETCH:
        _after_l2_prefetch("install_side", SIDE_PREFETCH[variant])
    if variant in ATTENTION_PREFETCH:
        _after_l2_prefetch("install_attention", True)
    if variant in PATCHED:
        PATCHED[variant]()
    if variant in ("prefill-unused", "prefill-replayed-once"):
        PrefillGraphs.can_run = lambda self, step: False
    if variant == "prefill-replayed-once":
        capture_only = PrefillGraphs.capture

        def capture_then_replay(self, pool=None, on_captured=None):
            capture_only(self, pool, on_captured)
            for bucket, graph in self.graphs.items():   # capture left every slot -1: no cache write
                self.cu_seqlens_q[2], self.seq_lens[1] = bucket, bucket - 1
                graph.replay()
            torch.cuda.synchronize()
        PrefillGraphs.capture = capture_then_replay
    if variant == "prefill-freed":
        import gc

        warm_up_and_keep = ModelRunner.warm_up

        def warm_up_then_drop(self):
            warm_up_and_keep(self)
            self.prefill_graphs = None   # the graphs and their outputs go; the prompts run eagerly
            gc.collect()
        ModelRunner.warm_up = warm_up_then_drop
    if variant == "prefill-128-x6":
        capture_once = PrefillGraphs.capture

        def capture_six_times(self, pool=None, on_captured=None):
            self.kept = []   # the earlier five stay alive (and in the pool) as the last replays
            for _ in range(6):
                capture_once(self, pool, on_captured)
                self.kept += [*self.graphs.values(), *self.outputs.values()]   # (all in one pool)
        PrefillGraphs.capture = capture_six_times
    if variant in ("prefill-six-keep-caches", "prefill-512-warm-x6"):
        capture_as_is, empty_device = PrefillGraphs.capture, torch.cuda.empty_cache
        host_empty = getattr(torch._C, "_host_emptyCache", lambda: None)   # (CUDA builds of torch 2.11)

        def empty_caches():   # what torch.cuda.graph does on entry, besides a sync
            empty_device()
            host_empty()

        def capture_keeping_caches(self, pool=None, on_captured=None):
            torch.cuda.empty_cache = torch._C._host_emptyCache = lambda: None   # looked up at each call
            try:
                capture_as_is(self, pool, on_captured)
            finally:
                torch.cuda.empty_cache, torch._C._host_emptyCache = empty_device, host_empty

        def capture_then_warm_five_more(self, pool=None, on_captured=None):
            capture_as_is(self, pool, on_captured)   # leaves the buffers as a warm-up wants them
            with torch.inference_mode():
                for _ in range(5):
                    self._last_logits(self.buckets[-1])
                    torch.cuda.synchronize()
                    empty_caches()
        PrefillGraphs.capture = (capture_keeping_caches if variant == "prefill-six-keep-caches"
                                 else capture_then_warm_five_more)
    if variant == "prefill-own-pools":
        capture_in_one_pool = PrefillGraphs.capture

        def capture_each_in_its_own(self, pool=None, on_captured=None):
            every = self.buckets
            for bucket in reversed(every):   # one bucket a call: a fresh private pool each
                self.buckets = [bucket]
                capture_in_one_pool(self, None, on_captured)
            self.buckets = every
        PrefillGraphs.capture = capture_each_in_its_own
    if variant == "prefill-no-pdl":
        from workbench.kernels import pdl
        capture_with_pdl = PrefillGraphs.capture

        def capture_without_pdl(self, *args, **kwargs):
            with pdl.launching(False):
                capture_with_pdl(self, *args, **kwargs)
        PrefillGraphs.capture = capture_without_pdl
    if variant == "prefill-first":
        warm_up = ModelRunner.warm_up

        def prefill_graphs_first(self):
            prefill, self.prefill_graphs = self.prefill_graphs, None
            if prefill is not None:   # (none on a CPU)
                self._own_launch_flags()   # the graphs record the PDL edges
                prefill.capture(pool=None)
            warm_up(self)   # compile, then the decode graphs
            self.prefill_graphs = prefill
        ModelRunner.warm_up = prefill_graphs_first
    flow = {}   # the whole request's GPU busy time, as it runs in the timed flow (flow_profile)
    plain_step_profile = bench.step_profile

    def flow_then_step_profile(llm, workload, tpot_ms):
        flow.update(flow_profile(llm, workload))
        return plain_step_profile(llm, workload, tpot_ms)
    bench.step_profile = flow_then_step_profile
    from workbench.measure import timeline
    profiled = []   # the timeline bench's step profile takes: each decode kernel, in order (below)
    profile = timeline.profile_engine_steps
    timeline.profile_engine_steps = lambda *a, **kw: profiled.append(profile(*a, **kw)) or profiled[-1]
    path = random_checkpoint(preset, workdir)
    load = bench.make_workload("single", ModelConfig.from_hf(path).vocab_size, new_tokens=new_tokens,
                               temperature=temperature)
    engine = {**ENGINE.get(variant, {}), **({"l2_prefetch": True} if variant in L2_AHEAD else {})}
    if torch.cuda.is_available() and (variant in PREFILL_BUCKETS or variant in (*OWN_POOL, *IDLE, *PREFILL_ORDER)):
        engine["prefill_graph_sizes"] = PREFILL_BUCKETS.get(variant, SIX_GRAPHS)   # (a CPU has no graphs to size)
    r = bench.bench_engine(path, Optimizations.all_on(), load, repeats=3, decode_steps=8, max_num_seqs=1, **engine)
    overlapped = engine.get("async_rounds", True)   # (8 decode steps: on unless turned off)
    sizes = engine.get("prefill_graph_sizes")   # (None: the engine's default, one graph, since session 16)
    print("RESULT " + json.dumps({"variant": variant, "temperature": temperature, "async_rounds": overlapped,
                                  "prefill_graph_sizes": sizes and list(sizes), **r.to_dict(), **flow, "step_kernels": step_kernels(profiled)}, default=str),
          flush=True)


def flow_profile(llm, workload) -> dict:
    """One request of the workload run as the timed runs run it (rounds of 8, async, no sync
    inside) under torch.profiler (GPU kernels only): its GPU busy time a token (the union of its
    kernels' spans, prefill included) beside its wall time a token. The profiled step
    (step_kernels) is one decode graph, synced; where TPOT exceeds it, this says whether the GPU
    sat idle between kernels in the real flow (busy < wall) or ran slower there (busy ~ wall)."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    from workbench.engine import SamplingParams
    from workbench.measure.timeline import StepWindow, spans_from_events, sweep
    if not str(llm.device).startswith("cuda"):
        return {}
    params = SamplingParams(temperature=workload.temperature, max_tokens=workload.output_lens[0], ignore_eos=True)
    try:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            start = time.perf_counter()
            llm.generate([list(workload.prompts[0])], params, use_tqdm=False)
            torch.cuda.synchronize()
            wall_us = (time.perf_counter() - start) * 1e6
        events = prof.events()
    except Exception as err:   # the timed row stands; say why this column is empty
        return {"flow_note": f"{type(err).__name__}: {err}"}
    # the request as one window; busy as step_profile counts a step's (overlapping spans once)
    lo = min((e.time_range.start for e in events), default=0.0)
    hi = max((e.time_range.end for e in events), default=0.0)
    gpu = [span for span in spans_from_events(events, [StepWindow(0, "request", lo, hi)])[0] if span.row == "gpu"]
    n = workload.output_lens[0]
    busy = sweep(gpu, lo, hi)[0]
    by_name = {}   # each kernel name's summed spans a token: which kernels a slower flow sits in
    for span in gpu:
        by_name[span.name[:70]] = by_name.get(span.name[:70], 0.0) + (span.end_us - span.start_us) / n
    return {"flow_kernels": len(gpu), "flow_wall_us_per_token": wall_us / n,
            "flow_busy_us_per_token": sum(busy.values()) / n,
            "flow_busy_by_family": {f: us / n for f, us in busy.items()},
            "flow_span_us_by_name": {k: round(v, 3) for k, v in sorted(by_name.items(), key=lambda t: -t[1])}}


def step_kernels(profiled: list) -> list[list]:
    """[name, us, end] of each kernel of the last profiled decode step (layer_time.decode_step_kernels):
    two variants' lists side by side (compare_kernels) say which kernels a step's extra microseconds sit in."""
    from workbench.measure.layer_time import decode_step_kernels
    return decode_step_kernels(profiled[-1]) if profiled else []


def _by_name(base: list, other: list) -> dict:
    """{kernel name: (other's us minus base's, other's launches)}; base, other: [(name, us)]."""
    out = {}
    for sign, kernels in ((-1, base), (1, other)):
        for kname, us in kernels:
            d, n = out.get(kname[:70], (0.0, 0))
            out[kname[:70]] = (d + sign * us, n + (sign > 0))
    return out


def compare_kernels(rows: list[dict], names: list[str], top: int = 12) -> None:
    """What each kernel added to the step (wall_added) in the later variants minus in the first
    (the last round of each): by position in the step when the kernels line up one to one, and
    summed by name; largest first."""
    from workbench.measure.layer_time import wall_added
    last = {r["variant"]: r["step_kernels"] for r in rows if r.get("step_kernels")}
    if names[0] not in last:
        return
    ends = all(len(k[0]) >= 3 for k in last.values() if k)   # else spans for all: like with like
    added = wall_added if ends else (lambda kernels: [k[1] for k in kernels])
    base = list(zip([k[0] for k in last[names[0]]], added(last[names[0]])))
    for name in names[1:]:
        if name not in last:
            continue
        other = list(zip([k[0] for k in last[name]], added(last[name])))
        same_order = [k[0] for k in other] == [k[0] for k in base]
        total = sum(k[1] for k in other) - sum(k[1] for k in base)
        what = "what each kernel adds to" if ends else "kernel spans (they overlap under PDL) of"
        print(f"\n{what} one decode step, {name} minus {names[0]}: {total:+.1f} us in all "
              f"({'the same kernels' if same_order else 'different kernels: by name only'}); largest:")
        if same_order:   # a uniform slowdown (clocks, memory) or a few kernels? both lists say
            diffs = [(o[1] - b[1], f"#{i} {b[0][:70]}") for i, (b, o) in enumerate(zip(base, other))]
            for d, label in sorted(diffs, key=lambda t: -abs(t[0]))[:top]:
                print(f"  {d:+7.2f} us  {label}")
            print("  summed by kernel name:")
        for kname, (d, n) in sorted(_by_name(base, other).items(), key=lambda t: -abs(t[1][0]))[:top]:
            print(f"  {d:+7.2f} us over {n:3d} launches  {kname}")


def compare_flows(rows: list[dict], names: list[str], top: int = 8) -> None:
    """The whole-request flow profile (flow_profile), later variants minus the first (the last
    round of each). The GPU's busy time by kernel family comes first: it is the one that reads
    under PDL. Each kernel name's summed spans follow, labelled: under PDL a span includes the
    wait on the kernel before it, so their differences can disagree in sign with the busy time."""
    last = {r["variant"]: r for r in rows if r.get("flow_busy_by_family") or r.get("flow_span_us_by_name")}
    if names[0] not in last:
        return
    for key, what in (("flow_busy_by_family", "GPU busy a token by kernel family"),
                      ("flow_span_us_by_name", "summed kernel spans a token by name (include PDL waits)")):
        base = last[names[0]].get(key) or {}
        for name in names[1:]:
            other = (last.get(name) or {}).get(key)
            if not base or not other:
                continue
            diffs = {k: other.get(k, 0.0) - base.get(k, 0.0) for k in {*base, *other}}
            print(f"\n{what}, {name} minus {names[0]}: {sum(diffs.values()):+.1f} us in all; largest:")
            for k, d in sorted(diffs.items(), key=lambda t: -abs(t[1]))[:top]:
                print(f"  {d:+7.2f} us  {k}")


def _us(row: dict) -> str:
    us = row["gpu_kernel_us_per_step"]
    return "unavailable (no CUDA)" if us is None else f"{us:7,.1f} us"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", nargs="?")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--preset", default="qwen3-0.6b", help="tiny: a smoke test of this script on a CPU")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy; eager-sampling needs > 0 to differ")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.workdir, args.preset, args.new_tokens, args.temperature)
        return 0
    from workbench.measure.results import stamp
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not args.json:
        ap.error(f"give OUT.json and variants from {', '.join(VARIANTS)}" + (f" (unknown: {unknown})" if unknown else ""))
    rows = []
    for round_ in range(args.rounds):
        for name in names:
            done = subprocess.run([sys.executable, __file__, "--child", name, "--workdir", args.workdir,
                                   "--preset", args.preset, "--new-tokens", str(args.new_tokens),
                                   "--temperature", str(args.temperature)],
                                  capture_output=True, text=True, cwd=REPO)
            found = [line[7:] for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not found:   # say why, keep going with the other variants
                print(f"round {round_ + 1} {name}: failed\n{done.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(found[0])
            rows.append(row)
            print(f"round {round_ + 1} {name:<18} {row['tok_s']:8,.0f} tok/s  GPU {_us(row)} a step  "
                  f"{row['kernels_per_step'] or '-'} kernels  TTFT {row['ttft_ms']:6.1f} ms", flush=True)
            command = "python scripts/ab_decode_candidates.py " + " ".join(sys.argv[1:])
            Path(args.json).write_text(json.dumps(stamp(rows, command), indent=1, default=str))
    print(f"\nmedians over {args.rounds} rounds (measured on {rows[0]['gpu'] if rows else '-'}):")
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        if mine:
            gpu = [r["gpu_kernel_us_per_step"] for r in mine if r["gpu_kernel_us_per_step"] is not None]
            flows = [r for r in mine if "flow_busy_us_per_token" in r]   # (none on a CPU)
            flow = (f"  whole request under the profiler: GPU busy "
                    f"{statistics.median(r['flow_busy_us_per_token'] for r in flows):.1f} of "
                    f"{statistics.median(r['flow_wall_us_per_token'] for r in flows):.1f} us a token") if flows else ""
            print(f"  {name:<18} {statistics.median(r['tok_s'] for r in mine):8,.0f} tok/s  "
                  f"GPU {f'{statistics.median(gpu):7,.1f} us' if gpu else 'unavailable (no CUDA)'} a step  "
                  f"TTFT {statistics.median(r['ttft_ms'] for r in mine):6.1f} ms{flow}")
    compare_kernels(rows, names)
    compare_flows(rows, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
