"""Engine configuration: what to run (EngineConfig) and how fast to run it (Optimizations).

Every lesson in the workbench is "flip one switch, re-run, measure". So each optimization is
one field of `Optimizations`, independent of the others, and `resolve()` turns a request into
what this machine can actually run -- refusing loudly, never pretending.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

ATTENTION_BACKENDS = ("naive", "sdpa", "flash")


@dataclass(frozen=True)
class Optimizations:
    """The switchboard. Each field attacks a different bottleneck:

    attention      naive (materializes N x N scores) | sdpa (torch's fused attention) | flash
                   (flash-attn varlen prefill + paged decode): attention's HBM traffic.
    fused_kernels  residual-add+RMSNorm, SwiGLU and RoPE as single Triton kernels: round trips
                   to HBM between small element-wise ops.
    decode_gemv    the linear layers' matmuls at <= 16 tokens (decode) as a Triton split-K GEMV
                   (workbench.kernels.gemv) instead of cuBLAS: weight bytes read per microsecond.
    cuda_graphs    capture decode once per batch-size bucket and replay: CPU launch overhead.
    compile        torch.compile the model forward: fusion and redundant work found by a compiler.
    """

    attention: str = "sdpa"
    fused_kernels: bool = False
    decode_gemv: bool = False
    cuda_graphs: bool = False
    compile: bool = False
    # Made by a preset: switches this machine cannot run are dropped (with a note), not refused.
    from_preset: bool = field(default=False, compare=False, repr=False)

    def __post_init__(self):
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(
                f"attention={self.attention!r} is not a backend; choose one of {ATTENTION_BACKENDS}")

    # Presets ------------------------------------------------------------------------------
    @classmethod
    def all_off(cls) -> "Optimizations":
        """The naive baseline: N x N attention, unfused ops, eager launches, no compiler."""
        return cls(attention="naive", from_preset=True)

    @classmethod
    def enforce_eager(cls) -> "Optimizations":
        """Debugging preset: plain eager PyTorch everywhere (readable stack traces)."""
        return cls(attention="naive", from_preset=True)

    @classmethod
    def all_on(cls) -> "Optimizations":
        """Everything on. On a CPU the CUDA-only switches are dropped and reported as skipped."""
        return cls(attention="flash", fused_kernels=True, decode_gemv=True, cuda_graphs=True, compile=True,
                   from_preset=True)

    @classmethod
    def preset(cls, name: str) -> "Optimizations":
        presets = {"all_off": cls.all_off, "enforce_eager": cls.enforce_eager, "all_on": cls.all_on,
                   "default": lambda: cls(from_preset=True)}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def label(self) -> str:
        """Short human label, e.g. 'flash+fused+graphs'."""
        parts = [self.attention]
        parts += [n for n, on in (("fused", self.fused_kernels), ("gemv", self.decode_gemv), ("graphs", self.cuda_graphs),
                                  ("compile", self.compile)) if on]
        return "+".join(parts)

    def cuda_only(self) -> list[str]:
        """The switches set here that need a CUDA GPU."""
        return [name for name, on in (("attention='flash'", self.attention == "flash"),
                                      ("fused_kernels=True", self.fused_kernels),
                                      ("decode_gemv=True", self.decode_gemv),
                                      ("cuda_graphs=True", self.cuda_graphs)) if on]

    def needs_cuda(self) -> bool:
        return bool(self.cuda_only())

    def resolve(self, device: str) -> tuple["Optimizations", list[str]]:
        """Return (what will run on `device`, notes on what was skipped and why).

        Asked for directly, a switch this machine cannot run is an error; asked for through a
        preset, it is dropped and the drop is reported -- never silently ignored.
        """
        if device.startswith("cuda"):
            if self.attention == "flash" and self.from_preset:
                from workbench.attention.flash import flash_status
                name, reason = flash_status()
                if name is None:
                    return dataclasses.replace(self, attention="sdpa"), [f"attention='flash': skipped, {reason}"]
            return self, []
        wanted = self.cuda_only()
        if wanted and not self.from_preset:
            raise ValueError(
                f"{', '.join(wanted)} need a CUDA GPU but the engine runs on {device!r}; "
                "use attention='sdpa' or 'naive' with fused_kernels=False, decode_gemv=False, cuda_graphs=False on a CPU "
                "(or a preset such as Optimizations.all_on(), which drops them with a note)")
        notes = [f"{name}: skipped, needs CUDA (running on {device})" for name in wanted]
        cpu = dataclasses.replace(self, attention="sdpa" if self.attention == "flash" else self.attention,
                                  fused_kernels=False, decode_gemv=False, cuda_graphs=False)
        return cpu, notes


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
                                         # decoding (Scheduler.plan_decode_steps,
                                         # ModelRunner.execute_decode_steps)

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
            (type(self.tensor_parallel_size) is int and self.tensor_parallel_size >= 1,
             f"tensor_parallel_size={self.tensor_parallel_size!r} must be an integer >= 1 (1: no tensor "
             "parallelism; N: split every layer across N GPUs or processes)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        if isinstance(self.opts, str):
            self.opts = Optimizations.preset(self.opts)   # presets drop what cannot run here
