"""ModelRunner: owns the model and the KV cache, turns a scheduled batch into tokens.

One step: pack the scheduled sequences' new tokens on the host (step_inputs.py), run the model --
eager or compiled, computing logits only for the rows that will sample; or, when the step is a
pure decode, replay a CUDA graph that records the whole step up to the logits (with
prefill_graphs, one sequence's prefill step too) -- and sample.
"""
from __future__ import annotations

import gc
import time
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from workbench.attention import AttentionMetadata
from workbench.config import EngineConfig
from workbench.model import ModelConfig, load_model
from workbench.optimizations import attention, decode_attention, decode_gemv, fused_decode, fused_kernels, l2_prefetch, pdl
from workbench.optimizations import compile as torch_compile
from workbench.optimizations.async_rounds import LaunchedRound
from workbench.optimizations.board import Optimizations
from workbench.optimizations.cuda_graphs import DecodeGraphs
from workbench.optimizations.prefill_graphs import PrefillGraphs, prefill_buckets

from .sampler import Sampler
from .sequence import Sequence
from .step_inputs import HostStep, next_decode_step, pack_step

CPU_DEFAULT_KV_GIB = 1.0


class ModelRunner:
    """One model (or, with tensor parallelism, rank `rank`'s shard: workbench.parallel.runner
    subclasses this and adds the other ranks) and its KV cache. Each switch is installed by its
    own module in workbench/optimizations/ right after the model is built."""

    def __init__(self, cfg: EngineConfig, model_cfg: ModelConfig, opts: Optimizations, *,
                 device: str, dtype: torch.dtype, max_model_len: int, rank: int = 0,
                 overrides: dict | None = None):
        self.cfg, self.model_cfg, self.opts = cfg, model_cfg, opts
        self.overrides = overrides or {}   # seams (engine/overrides.py), checked by LLM
        self.tp_size, self.rank = cfg.tensor_parallel_size, rank
        self.device, self.dtype = torch.device(device), dtype
        if self.device.type == "cuda" and self.device.index is not None:
            torch.cuda.set_device(self.device)   # memory queries, syncs and graph capture use the current device
        self.block_size = cfg.block_size
        self.max_model_len = max_model_len
        self.max_blocks_per_seq = -(-max_model_len // cfg.block_size)
        self.num_kv_heads = model_cfg.num_kv_heads // self.tp_size   # this rank's share of the KV heads
        self.timings: dict[str, float] = {}
        self._build(device)

    def _build(self, device: str) -> None:
        cfg, model_cfg, opts, dtype = self.cfg, self.model_cfg, self.opts, self.dtype
        start = time.perf_counter()
        self.model = load_model(cfg.model, model_cfg, dtype=dtype, device=device, tp_rank=self.rank,
                                tp_size=self.tp_size)
        # Install the switches (each in its own module of workbench/optimizations/)
        attention.install(self.model, opts.attention, self.overrides.get("attention"))
        fused_kernels.install(self.model, opts.fused_kernels, self.overrides)
        decode_gemv.install(self.model, opts.decode_gemv)
        fused_decode.install(self.model, opts.fused_decode, self.overrides)
        decode_attention.install(self.model, opts.decode_attention, self.overrides.get("attention"))
        l2_prefetch.install(self.model, cfg.l2_prefetch)   # (LLM refuses it without the GEMV switches)
        self.timings["load_s"] = time.perf_counter() - start
        self.num_kv_blocks = self._plan_kv_blocks()
        self.kv_cache = torch.zeros(2, model_cfg.num_layers, self.num_kv_blocks, cfg.block_size,
                                    self.num_kv_heads, model_cfg.head_dim, dtype=dtype, device=device)
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.k_cache, layer.self_attn.v_cache = self.kv_cache[0, i], self.kv_cache[1, i]
        self.sampler = Sampler(device, cfg.seed, fused=cfg.fused_sampling)
        self.generator = self.sampler.generator   # unseeded requests share it
        self.sample = self.overrides.get("sampler") or self.sampler.sample

        self.forward = torch_compile.install(self.model) if opts.compile else self.model.forward
        self.graphs = None
        if opts.cuda_graphs:
            self.graphs = DecodeGraphs(self.forward_logits, max_num_seqs=cfg.max_num_seqs,
                                       max_blocks_per_seq=self.max_blocks_per_seq, max_model_len=self.max_model_len,
                                       device=self.device, sample_in_graph=cfg.graph_sampling)
        self.prefill_graphs = None
        if cfg.prefill_graphs:   # (LLM refuses it without cuda_graphs)
            self.prefill_graphs = PrefillGraphs(
                self.forward, self.model.compute_logits, device=self.device, max_model_len=self.max_model_len,
                buckets=prefill_buckets(cfg.max_num_batched_tokens, self.max_model_len, cfg.prefill_graph_sizes),
                max_blocks_per_seq=self.max_blocks_per_seq)
        self.warm_up()

    # KV cache sizing ---------------------------------------------------------------------------
    @property
    def kv_bytes_per_block(self) -> int:
        m = self.model_cfg
        return 2 * m.num_layers * self.block_size * self.num_kv_heads * m.head_dim * self.dtype.itemsize

    def _plan_kv_blocks(self) -> int:
        cfg = self.cfg
        if cfg.num_kv_blocks is not None:
            return cfg.num_kv_blocks
        if cfg.kv_cache_gib is not None:
            budget = cfg.kv_cache_gib * 2**30
        elif self.device.type == "cuda":
            budget = self._free_gpu_bytes_for_kv()
        else:   # enough for every sequence at full length, capped
            wanted = cfg.max_num_seqs * self.max_blocks_per_seq * self.kv_bytes_per_block
            budget = min(wanted, CPU_DEFAULT_KV_GIB * 2**30)
        blocks = int(budget // self.kv_bytes_per_block)
        if blocks < 1:
            raise ValueError(f"the KV-cache budget ({budget / 2**30:.2f} GiB) holds no block of "
                             f"{self.kv_bytes_per_block / 2**20:.1f} MiB: raise gpu_memory_utilization or "
                             "kv_cache_gib, or lower block_size/max_num_batched_tokens")
        return blocks

    def _free_gpu_bytes_for_kv(self) -> int:
        """gpu_memory_utilization x total, minus what is in use, minus the peak activations of
        the largest step (measured by running one on a throw-away cache)."""
        gc.collect()   # an engine closed or dropped just before may still hold memory until collected
        torch.cuda.empty_cache()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        self._profile_run()
        peak_extra = torch.cuda.max_memory_allocated() - base
        torch.cuda.empty_cache()   # else the freed activations count twice: in `used` and in peak_extra
        free, total = torch.cuda.mem_get_info()
        used = total - free
        return int(total * self.cfg.gpu_memory_utilization - used - peak_extra)

    @torch.inference_mode()
    def _profile_run(self) -> None:
        tokens = min(self.cfg.max_num_batched_tokens, self.max_model_len * self.cfg.max_num_seqs)
        seq_len = min(tokens, self.max_model_len)
        num_seqs = max(1, tokens // seq_len)
        blocks_per_seq = -(-seq_len // self.block_size)
        m = self.model_cfg
        scratch = torch.zeros(2, num_seqs * blocks_per_seq, self.block_size, self.num_kv_heads, m.head_dim,
                              dtype=self.dtype, device=self.device)
        for layer in self.model.layers:
            layer.self_attn.k_cache, layer.self_attn.v_cache = scratch[0], scratch[1]
        # token 0 exists in every vocabulary (the sorter's has 15 ids)
        seqs = [([0] * seq_len, list(range(b * blocks_per_seq, (b + 1) * blocks_per_seq)))
                for b in range(num_seqs)]
        ids, pos, meta = pack_step([(tokens_, table, 0, seq_len) for tokens_, table in seqs],
                                   self.block_size).to_device(self.device)
        hidden = self.model(ids, pos, meta)
        self.model.compute_logits(hidden[meta.cu_seqlens_q[1:].long() - 1])
        del scratch, hidden
        torch.cuda.synchronize()

    # Warm-up -----------------------------------------------------------------------------------
    def _own_launch_flags(self) -> None:
        """Set the kernels' process-wide PDL flag (kernels/pdl.py) to this engine's switch: called
        before each of its steps and its graph capture, so an engine built later in the process
        never decides how this one launches."""
        pdl.install(self.model, self.opts.pdl)

    def warm_up(self) -> None:
        """Compile and capture outside any timed region; record how long each took."""
        self._own_launch_flags()   # before graph capture: the graphs record the PDL edges
        stages = int(self.opts.compile) + (len(self.graphs.buckets) * (1 + self.cfg.graph_rounds)
                                           if self.graphs is not None else 0)
        stages += len(self.prefill_graphs.buckets) if self.prefill_graphs is not None else 0
        shown = self.cfg.warmup_progress and stages > 0 and self.rank == 0
        with tqdm(total=stages, desc="warm-up", unit="stage", disable=not shown, leave=False) as bar:
            if self.opts.compile:
                bar.set_postfix_str("torch.compile: the first forward")
                start = time.perf_counter()
                dummy = Sequence(-1, [0] * min(16, self.max_model_len - 1), None)
                dummy.block_table = [0] * -(-len(dummy) // self.block_size)
                with torch.inference_mode():
                    ids, pos, meta = self.prepare([(dummy, len(dummy))]).to_device(self.device)
                    self.forward(ids, pos, meta)
                self.timings["compile_s"] = time.perf_counter() - start
                bar.update()
            if self.graphs is not None:
                bar.set_postfix_str("capturing a decode graph per batch size")
                self.graphs.capture(on_captured=bar.update)
                if self.cfg.graph_rounds:
                    kind = "" if self.cfg.graph_sampling else " greedy"
                    bar.set_postfix_str(f"capturing a round of {self.cfg.decode_steps}{kind} steps per batch size")
                    self.graphs.capture_rounds(self.cfg.decode_steps, self.block_size, on_captured=bar.update)
                self.timings["graph_capture_s"] = self.graphs.capture_seconds
            if self.prefill_graphs is not None:
                bar.set_postfix_str("capturing a one-sequence prefill graph per token count")
                self.prefill_graphs.capture(pool=self.graphs.pool, on_captured=bar.update)
                self.timings["prefill_graph_capture_s"] = self.prefill_graphs.capture_seconds

    # One step ----------------------------------------------------------------------------------
    def prepare(self, scheduled: list[tuple[Sequence, int]]) -> HostStep:
        return pack_step([(seq.token_ids, seq.block_table, seq.num_computed_tokens,
                           seq.num_computed_tokens + n) for seq, n in scheduled], self.block_size)

    @torch.inference_mode()   # never traced for autograd (torch.compile would ask our kernels for a backward)
    def forward_logits(self, input_ids, positions, meta: AttentionMetadata) -> torch.Tensor:
        """Logits of every packed row: what a decode graph records (each decode row samples)."""
        return self.model.compute_logits(self.forward(input_ids, positions, meta))

    @torch.inference_mode()
    def execute(self, scheduled: list[tuple[Sequence, int]], host_seconds: dict | None = None
                ) -> tuple[list[int | None], dict[int, torch.Tensor]]:
        """Run one step; return the sampled token per scheduled sequence (None: prompt chunk
        that does not reach the end of its tokens yet, so nothing to sample) and the logits of
        the sequences that asked for them (by index into `scheduled`). `host_seconds` (optional)
        accumulates the host time of prepare / launch / sample."""
        self._own_launch_flags()
        t0 = time.perf_counter()
        step = self.prepare(scheduled)
        samples = [i for i, (seq, n) in enumerate(scheduled) if seq.num_computed_tokens + n == len(seq)]
        t1 = time.perf_counter()
        tokens = None
        if self.graphs is not None and self.graphs.can_run(step):
            seqs = [seq for seq, _ in scheduled]
            if self.graphs.sampling is not None and len(samples) == len(scheduled):   # graph_sampling
                logits, tokens = self._replay_sampling(step, seqs, self._rows(seqs))
            else:
                if self.graphs.sampling is not None:   # a row that does not sample: the graph samples all
                    self.graphs.sampling.stage(None)   # rows greedily (tokens unused); the sampler below decides
                logits = self.graphs.run(step)
            if len(samples) < len(scheduled):   # a 1-token prompt chunk that does not sample
                logits = logits[samples]
        elif self.prefill_graphs is not None and self.prefill_graphs.can_run(step):
            logits = self.prefill_graphs.run(step)   # the prompt's last token (used if it samples)
        else:
            with self._guard("step"):
                input_ids, positions, meta = self._step_inputs(step)
                hidden = self._eager_forward(step)(input_ids, positions, meta)
            logits = None
            if samples:
                last_rows = meta.cu_seqlens_q[1:].long() - 1
                logits = self.model.compute_logits(hidden[last_rows[samples]])
        t2 = time.perf_counter()
        if host_seconds is not None:
            host_seconds["prepare"] += t1 - t0
            host_seconds["launch"] += t2 - t1
        if not samples:
            return [None] * len(scheduled), {}
        if tokens is None:
            tokens = self._sample(logits, [scheduled[i][0] for i in samples])
        tokens = tokens.tolist()   # waits for the GPU
        if host_seconds is not None:
            host_seconds["sample"] += time.perf_counter() - t2
        out: list[int | None] = [None] * len(scheduled)
        for i, token in zip(samples, tokens):
            out[i] = token
        kept = {i: logits[row].float().cpu() for row, i in enumerate(samples)
                if scheduled[i][0].params.return_logits}
        return out, kept

    def execute_decode_steps(self, scheduled: list[tuple[Sequence, int]], num_steps: int,
                             host_seconds: dict | None = None) -> list[list[int]]:
        """Multi-step decoding: `num_steps` decode steps of the same sequences, back to back;
        returns each sequence's new tokens. Each step's input tokens are the previous step's
        samples, handed over on the GPU, so the host never waits between steps: it prepares step
        i+1 while the GPU runs step i, and waits once, at the end. (The block tables must
        already hold room for every step: Scheduler.plan_decode_steps.)"""
        return self.read_round(self.launch_scheduled_round(scheduled, num_steps, host_seconds), host_seconds)

    def launch_scheduled_round(self, scheduled: list[tuple[Sequence, int]], num_steps: int,
                               host_seconds: dict | None = None) -> LaunchedRound:
        """Pack the scheduled decode step and launch a round from it (launch_round)."""
        t0 = time.perf_counter()
        step = self.prepare(scheduled)
        if host_seconds is not None:
            host_seconds["prepare"] += time.perf_counter() - t0
        return self.launch_round([seq for seq, _ in scheduled], num_steps, step, host_seconds=host_seconds)

    @torch.inference_mode()
    def launch_round(self, seqs: list[Sequence], num_steps: int, step: HostStep, input_ids: torch.Tensor | None = None,
                     ahead: int = 0, host_seconds: dict | None = None) -> LaunchedRound:
        """Launch a round of `num_steps` decode steps from `step` and return before it ends (the
        host stays within ~2 steps of the GPU on the graph path: DecodeGraphs._stage waits for the
        previous step's input copies). input_ids (async_rounds): the first step's tokens as a device tensor, instead of
        step.input_ids; ahead: tokens each sequence samples in a round launched before this one
        and not read yet (the fused sampler's counters start past them)."""
        self._own_launch_flags()
        t0 = time.perf_counter()
        # the sampling parameters go to the device once a round, not once a step (None: all greedy,
        # or a sampler override)
        rows = self._rows(seqs, ahead)
        if self._round_graph_fits(step, num_steps, rows):   # graph_rounds: one replay
            if self.graphs.sampling is not None:
                self.graphs.sampling.stage(rows)
            tokens = self.graphs.run_round(step, input_ids)
        else:
            sampled, samples = input_ids, []
            for i in range(num_steps):
                if i:
                    step = next_decode_step(step, self.block_size)
                replay = self.graphs is not None and self.graphs.can_run(step)
                if replay and self.graphs.sampling is not None:   # graph_sampling: the replay samples too
                    _, sampled = self._replay_sampling(step, seqs, rows, input_ids=sampled)
                else:
                    if replay:
                        logits = self.graphs.run(step, input_ids=sampled)
                    else:
                        ids, positions, meta = step.to_device(self.device)
                        logits = self.forward_logits(ids if sampled is None else sampled, positions, meta)
                    sampled = self._sample(logits, seqs, rows)
                samples.append(sampled)
            tokens = torch.stack(samples, dim=1)
        launched = LaunchedRound(seqs, num_steps, tokens)
        if host_seconds is not None:   # launch: the later steps' packing too (it overlaps the GPU)
            host_seconds["launch"] += time.perf_counter() - t0
        return launched

    def read_round(self, launched: LaunchedRound, host_seconds: dict | None = None) -> list[list[int]]:
        """A launched round's tokens per sequence: the one wait for the GPU a round."""
        t0 = time.perf_counter()
        tokens = launched.read()
        if host_seconds is not None:
            host_seconds["sample"] += time.perf_counter() - t0
        return tokens

    def _eager_forward(self, step: HostStep):
        """The forward a step outside the graphs runs: the plain one for steps with prompt tokens
        under compile_prefill=False (optimizations/compile.py), else self.forward."""
        if self.opts.compile and not self.cfg.compile_prefill and not step.is_decode:
            return self.model.forward
        return self.forward

    def _rows(self, seqs: list[Sequence], ahead: int = 0):
        """The built-in sampler's rows for these sequences on the device; None for an all-greedy
        batch or a sampler override (which takes the sequences themselves)."""
        if self.sample != self.sampler.sample or all(seq.params.greedy for seq in seqs):
            return None
        return self.sampler.rows(seqs, self.model_cfg.vocab_size, self.device, ahead)

    def _replay_sampling(self, step: HostStep, seqs: list[Sequence], rows, input_ids=None):
        """graph_sampling: replay the step's decode graph, which samples too; (logits, tokens)."""
        self.graphs.sampling.stage(rows)
        logits = self.graphs.run(step, input_ids=input_ids)
        return logits, self.sampler.finish_fused(self.graphs.sampled(step.num_seqs), logits, seqs, rows)

    def _round_graph_fits(self, step: HostStep, num_steps: int, rows) -> bool:
        """graph_rounds (multi_step.py): a captured round fits this one -- its length, a batch a
        graph holds, and rows it samples whole: greedy ones (the built-in sampler), or with
        graph_sampling temperature rows too, but no top-k/top-p row (its eager pass cannot run
        between the graph's steps)."""
        if self.graphs is None or self.graphs.round_steps != num_steps or not self.graphs.can_run(step):
            return False
        if self.sample != self.sampler.sample:
            return False
        if rows is None:   # all greedy
            return True
        return self.graphs.sampling is not None and rows.filtered is None

    # Hooks tensor parallelism overrides (workbench/parallel/runner.py) --------------------------
    def _guard(self, what: str):
        return nullcontext()

    def _step_inputs(self, step: HostStep):
        return step.to_device(self.device)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], rows=None) -> torch.Tensor:
        """The next token per row; an overridden sampler gets float32 logits and is checked.
        rows: the built-in sampler's per-row parameters, when already on the device."""
        if self.sample == self.sampler.sample:
            return self.sample(logits, seqs, rows)
        tokens = self.sample(logits.float(), seqs)
        if not isinstance(tokens, torch.Tensor) or tokens.shape != (len(seqs),) or tokens.dtype != torch.int64:
            got = f"{tuple(tokens.shape)} {tokens.dtype}" if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise TypeError(f"the sampler override must return an int64 tensor of shape ({len(seqs)},), "
                            f"one token per sequence; it returned {got}")
        return tokens

    def close(self) -> None:
        self.graphs = self.prefill_graphs = None   # each holds the model (its forward) and the graphs' pool
        self.forward = None
        self.model = None
        self.kv_cache = None
