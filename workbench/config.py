"""Engine configuration: what to run (EngineConfig), validated with errors that say what to do.

How fast to run it is the switchboard, `Optimizations` (workbench/optimizations/board.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from workbench.optimizations import async_rounds
from workbench.optimizations.board import Optimizations

@dataclass
class EngineConfig:
    """Everything the engine needs besides the switchboard.

    KV-cache size: on a GPU from `gpu_memory_utilization` (fraction of total memory the whole
    process may use); otherwise from `num_kv_blocks` or `kv_cache_gib`. With tensor parallelism
    these are per rank (per GPU), and a block holds only that rank's share of the KV heads.

    tensor_parallel_size: split every layer across this many ranks (GPUs with NCCL; processes
    with gloo on a CPU); it must divide the model's head counts (see workbench.parallel).
    """

    model: str
    opts: Optimizations = field(default_factory=Optimizations)
    device: str | None = None            # None: cuda if available, else cpu
    dtype: str | None = None             # None: bfloat16 on cuda, float32 on cpu
    max_num_seqs: int = 256              # most sequences in one step
    max_num_batched_tokens: int = 8192   # most tokens (prefill + decode) in one step; with
                                         # chunked_prefill=False a recomputed (preempted) sequence
                                         # longer than this still runs, alone in its step
    max_model_len: int | None = None     # None: min(model's max_position_embeddings, 4096)
    block_size: int = 128                # tokens per KV block (flash-attn-4's TMA path likes 128)
    num_kv_blocks: int | None = None
    kv_cache_gib: float | None = None
    gpu_memory_utilization: float = 0.9
    enable_prefix_caching: bool = True
    chunked_prefill: bool = True
    seed: int = 0
    tensor_parallel_size: int = 1
    decode_steps: int = 1                # decode steps per scheduling round; > 1: multi-step
                                         # decoding (workbench/optimizations/multi_step.py)
    graph_rounds: bool = False           # a greedy round of decode_steps steps as ONE graph replay
                                         # (temperature rounds too with graph_sampling; needs
                                         # cuda_graphs and decode_steps > 1; multi_step.py)
    compile_prefill: bool = True         # with compile on: steps with prompt tokens outside the graphs run
                                         # the compiled forward (True) or the plain one (False: no dynamo
                                         # guards and wrappers a layer; optimizations/compile.py), a candidate
    l2_prefetch: bool = False            # each decode GEMV asks L2 for the next matmul's weights while it
                                         # runs (optimizations/l2_prefetch.py; needs decode_gemv or
                                         # fused_decode); measured slower on an H200 (session 15)
    async_rounds: bool | None = None     # launch the next decode round before reading the running
                                         # one (optimizations/async_rounds.py). None: on wherever
                                         # decode_steps > 1 (True: required; False: its twin, each
                                         # round read before the next is scheduled)
    prefill_graphs: bool | None = None   # one sequence's prefill step replayed from a CUDA graph
                                         # (padded to its size: optimizations/prefill_graphs.py): the
                                         # time to the first token. None: on wherever cuda_graphs is
                                         # (True: required; False: the eager prefill, its twin)
    prefill_graph_sizes: tuple[int, ...] | None = None   # the token counts prefill_graphs records a
                                         # graph for. None: ONE graph, min(512, a step, a sequence)
                                         # tokens, every shorter prompt padded to it: two graphs or
                                         # more slowed every decode step on an H200 (session 16: one
                                         # graph 0.657-0.663 ms a token, two 0.670, three to six
                                         # 0.674-0.685). (16, 32, ... 512): less padding for short
                                         # prompts (their first token), slower decoding
    fused_sampling: bool | None = None   # temperature rows without top-k/top-p sampled by one Triton
                                         # kernel pair (kernels/sample.py; its own random stream).
                                         # None: on a CUDA GPU, one rank, the built-in sampler (True:
                                         # required, or TRITON_INTERPRET=1 on a CPU; False: eager)
    graph_sampling: bool = False         # each decode graph records the fused sampler after the LM head
                                         # (under PDL): a decode step's tokens come out of the replay
                                         # (optimizations/graph_sampling.py; needs cuda_graphs and
                                         # fused_sampling), a candidate
    warmup_progress: bool = False        # a progress bar over warm-up (compile, each graph
                                         # captured): a long wait that shows it is moving

    def __post_init__(self):
        checks = [
            (self.max_num_seqs >= 1, f"max_num_seqs={self.max_num_seqs} must be >= 1"),
            (self.max_model_len is None or (type(self.max_model_len) is int and self.max_model_len >= 1),
             f"max_model_len={self.max_model_len!r} must be an integer >= 1 (or None: the model's "
             "max_position_embeddings, at most 4096)"),
            (self.max_num_batched_tokens >= 1,
             f"max_num_batched_tokens={self.max_num_batched_tokens} must be >= 1"),
            (self.block_size >= 1 and (self.block_size & (self.block_size - 1)) == 0,
             f"block_size={self.block_size} must be a power of two (e.g. 16 or 128)"),
            (0.0 < self.gpu_memory_utilization <= 1.0,
             f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]"),
            (self.num_kv_blocks is None or self.num_kv_blocks >= 1,
             f"num_kv_blocks={self.num_kv_blocks} must be >= 1 (or None to size from memory)"),
            (self.kv_cache_gib is None or self.kv_cache_gib > 0,
             f"kv_cache_gib={self.kv_cache_gib} must be > 0 (or None)"),
            (type(self.decode_steps) is int and self.decode_steps >= 1,
             f"decode_steps={self.decode_steps!r} must be an integer >= 1 (1: schedule every step)"),
            (not self.graph_rounds or self.decode_steps > 1,
             f"graph_rounds=True captures a round of decode_steps steps, but decode_steps={self.decode_steps}: "
             "set decode_steps > 1 (e.g. 8), or graph_rounds=False"),
            (type(self.compile_prefill) is bool,
             f"compile_prefill={self.compile_prefill!r} must be True or False"),
            (type(self.l2_prefetch) is bool, f"l2_prefetch={self.l2_prefetch!r} must be True or False"),
            (type(self.graph_sampling) is bool, f"graph_sampling={self.graph_sampling!r} must be True or False"),
            (self.async_rounds is None or type(self.async_rounds) is bool,
             f"async_rounds={self.async_rounds!r} must be True, False or None (on wherever decode_steps > 1)"),
            (self.async_rounds is not True or self.decode_steps > 1,
             f"async_rounds=True: {async_rounds.why_not(self.decode_steps)}, or async_rounds=False"),
            (self.prefill_graph_sizes is None or (
                isinstance(self.prefill_graph_sizes, tuple) and len(self.prefill_graph_sizes) >= 1
                and all(type(n) is int and n >= 1 for n in self.prefill_graph_sizes)),
             f"prefill_graph_sizes={self.prefill_graph_sizes!r} must be a tuple of token counts >= 1, "
             "e.g. (128, 512), or None (one graph of min(512, a step, a sequence) tokens)"),
            (type(self.tensor_parallel_size) is int and self.tensor_parallel_size >= 1,
             f"tensor_parallel_size={self.tensor_parallel_size!r} must be an integer >= 1 (1: no tensor "
             "parallelism; N: split every layer across N GPUs or processes)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if isinstance(self.opts, str):
            self.opts = Optimizations.preset(self.opts)   # presets drop what cannot run here
