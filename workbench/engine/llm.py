"""LLM: the user-facing engine. Requests in, tokens out, one scheduler step at a time.

    llm = LLM("path/to/checkpoint", opts=Optimizations(attention="sdpa"))
    outs = llm.generate(["sort: 3 1 2 ->"], SamplingParams(temperature=0, max_tokens=8))
    outs = llm.chat([{"role": "user", "content": "Hi"}], SamplingParams(max_tokens=32))

Every step: the scheduler picks sequences and token counts, the runner computes and samples,
and the engine appends tokens, checks stop conditions and frees finished sequences' blocks.
"""
from __future__ import annotations

import gc
import importlib.util
import os
import time
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from workbench.config import EngineConfig
from workbench.model import ModelConfig
from workbench.optimizations import graph_sampling, l2_prefetch, multi_step
from workbench.optimizations.async_rounds import LaunchedRound
from workbench.optimizations.board import Optimizations
from workbench.optimizations.prefill_graphs import oversized, prefill_buckets
from workbench.parallel.tensor_parallel import check_tensor_parallel

from .block_manager import BlockManager, block_hash
from .describe import describe_engine
from .overrides import check_overrides
from .runner import ModelRunner
from .measurement import MeasurementMethods
from .outputs import EngineStats, RequestOutput
from .prompts import chat_prompts, params_list, prompt_list, token_ids_of
from .sampling_params import SamplingParams
from .scheduler import Scheduler, newest
from .sequence import Sequence, Status
from .step_inputs import decode_step_at
from .stream import RequestStream, StreamEvent
from .telemetry import Telemetry

Prompt = str | list[int]   # (or a 1-D integer numpy array / torch tensor of ids)
Conversation = list[dict]  # [{"role": "user", "content": "..."}, ...]


def _pick_device_dtype(cfg: EngineConfig, model_cfg: ModelConfig) -> tuple[str, torch.dtype]:
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but torch sees no CUDA GPU; use device='cpu'")
    name = cfg.dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if name not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={name!r}: choose float32, bfloat16 or float16")
    return device, getattr(torch, name)


def _why_no_fused_sampling(device: str, overrides: dict) -> str | None:
    """Why the fused sampler (engine/sampler.py, kernels/sample.py) cannot run here, if it cannot."""
    if "sampler" in overrides:
        return "overrides={'sampler': ...} replaces the built-in sampler it is part of; drop one of the two"
    if importlib.util.find_spec("triton") is None:
        return "its kernel is Triton's, and triton is not installed; use fused_sampling=False"
    if not device.startswith("cuda") and os.environ.get("TRITON_INTERPRET") != "1":
        return ("its Triton kernel needs a CUDA GPU (or, on a CPU, Triton's interpreter: "
                "TRITON_INTERPRET=1 before triton is imported); use fused_sampling=False")
    return None


class LLM(MeasurementMethods):
    def __init__(self, model: str | Path, opts: Optimizations | str | None = None, *,
                 overrides: dict | None = None, **engine_kwargs):
        """overrides: replace built-in pieces with your functions, {name: fn}; the names and
        signatures are in workbench/engine/overrides.py (attention, block_hasher, preemption,
        sampler, and the layer forms)."""
        opts = opts if opts is not None else Optimizations()
        self.config = EngineConfig(model=str(model), opts=opts, **engine_kwargs)
        self.overrides = check_overrides(overrides, self.config.tensor_parallel_size)
        self.model_config = ModelConfig.from_hf(model)
        self.device, self.dtype = _pick_device_dtype(self.config, self.model_config)
        tp, m = self.config.tensor_parallel_size, self.model_config   # tensor parallelism: can it split?
        check_tensor_parallel(tp, m.num_heads, m.num_kv_heads, m.intermediate_size, self.device)
        self.opts, self.skipped = self.config.opts.resolve(self.device, tp)   # the board decides what runs
        if self.config.decode_steps > 1 and (why := multi_step.why_not(self.device, tp)):
            raise ValueError(f"decode_steps={self.config.decode_steps}: {why}")
        if not self.config.compile_prefill and tp > 1:   # the worker ranks run one forward for every step
            raise ValueError("compile_prefill=False is not implemented with tensor parallelism: "
                             "use compile_prefill=True with tensor_parallel_size > 1")
        if self.config.graph_rounds and not self.opts.cuda_graphs:
            why = "".join(f" ({note})" for note in self.skipped if note.startswith("cuda_graphs"))
            raise ValueError(f"graph_rounds=True records a round in a CUDA graph, but cuda_graphs is off{why}: "
                             "turn cuda_graphs on (a CUDA GPU), or graph_rounds=False")
        if self.config.l2_prefetch and (why := l2_prefetch.why_not(self.opts)):
            why += "".join(f" ({note})" for note in self.skipped if note.startswith(("decode_gemv", "fused_decode")))
            raise ValueError(f"l2_prefetch=True: {why}: turn decode_gemv or fused_decode on (a CUDA GPU with "
                             "Triton), or l2_prefetch=False")
        no_fused = _why_no_fused_sampling(self.device, self.overrides)
        if self.config.fused_sampling and no_fused:
            raise ValueError(f"fused_sampling=True: {no_fused}")
        if self.config.fused_sampling is None:   # on where it measured faster: a GPU (engine/sampler.py)
            self.config.fused_sampling = no_fused is None and self.device.startswith("cuda") and tp == 1
        if self.config.graph_sampling and (why := graph_sampling.why_not(self.opts.cuda_graphs,
                                                                         self.config.fused_sampling)):
            why += "".join(f" ({note})" for note in self.skipped if note.startswith("cuda_graphs"))
            if self.opts.cuda_graphs and no_fused:
                why += f" ({no_fused})"
            raise ValueError(f"graph_sampling=True: {why}: turn cuda_graphs and fused_sampling on (a CUDA GPU "
                             "with Triton, no sampler override), or graph_sampling=False")
        if self.config.async_rounds is None:   # on wherever there are rounds (measured: async_rounds.py)
            self.config.async_rounds = self.config.decode_steps > 1
        self._decode_steps = self.config.decode_steps   # (a measurement may hold it at 1: decode_steps_override)
        self.max_model_len = self.config.max_model_len
        if self.max_model_len is None:
            self.max_model_len = min(self.model_config.max_position_embeddings, 4096)
        if self.config.prefill_graphs is None:   # on wherever decode graphs are
            self.config.prefill_graphs = self.opts.cuda_graphs
        no_graphs = "".join(f" ({note})" for note in self.skipped if note.startswith("cuda_graphs"))
        if self.config.prefill_graph_sizes is not None and not self.config.prefill_graphs:
            why = no_graphs or (" (cuda_graphs is off)" if not self.opts.cuda_graphs else " (prefill_graphs=False)")
            raise ValueError(f"prefill_graph_sizes={self.config.prefill_graph_sizes} sizes the prefill graphs, but "
                             f"prefill_graphs is off here{why}: turn prefill_graphs and cuda_graphs on (a CUDA "
                             "GPU), or leave prefill_graph_sizes=None")
        limits = self.config.max_num_batched_tokens, self.max_model_len
        too_big = oversized(prefill_buckets(*limits, self.config.prefill_graph_sizes), *limits)
        if self.config.prefill_graphs and too_big:
            raise ValueError(f"prefill_graph_sizes: a graph of {too_big[0]} tokens holds more than a step or a sequence "
                             f"may hold here (max_num_batched_tokens={limits[0]}, max_model_len={limits[1]}): give "
                             f"smaller sizes, or prefill_graph_sizes=None (one graph that fits), or prefill_graphs=False")
        if self.config.prefill_graphs and not self.opts.cuda_graphs:
            raise ValueError(f"prefill_graphs=True records prefill steps in CUDA graphs, but cuda_graphs is off{no_graphs}: "
                             "turn cuda_graphs on (a CUDA GPU), or prefill_graphs=False")
        if self.max_model_len > self.model_config.max_position_embeddings:
            raise ValueError(f"max_model_len={self.max_model_len} exceeds the model's "
                             f"max_position_embeddings={self.model_config.max_position_embeddings}")
        self.tokenizer = self._load_tokenizer(Path(model))
        Runner = ModelRunner
        if tp > 1:   # a collaborator the 1-GPU engine never imports
            from workbench.parallel.runner import TensorParallelRunner as Runner
        self.runner = Runner(self.config, self.model_config, self.opts, device=self.device,
                                  dtype=self.dtype, max_model_len=self.max_model_len, overrides=self.overrides)
        self.block_manager = BlockManager(self.runner.num_kv_blocks, self.config.block_size,
                                          self.config.enable_prefix_caching,
                                          self.overrides.get("block_hasher", block_hash))
        self.scheduler = Scheduler(self.block_manager, max_num_seqs=self.config.max_num_seqs,
                                   max_num_batched_tokens=self.config.max_num_batched_tokens,
                                   chunked_prefill=self.config.chunked_prefill,
                                   preemption=self.overrides.get("preemption", newest))
        self.stats = EngineStats()
        self.telemetry = Telemetry()              # one row per step (engine/telemetry.py)
        self._next_id = 0
        self._eos = set(self.model_config.eos_token_ids)
        self._listeners: dict[int, object] = {}   # request id -> its stream's event queue (stream.py)
        self._stepping = False                    # inside step(): aborts wait until it ends
        self._deferred_aborts: list[Sequence] = []
        self._launched: LaunchedRound | None = None   # async_rounds: a round on the GPU, not read yet

    @staticmethod
    def _load_tokenizer(path: Path):
        if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
            return None   # token-id prompts still work
        from transformers import AutoTokenizer
        return AutoTokenizer.from_pretrained(str(path))

    # Requests --------------------------------------------------------------------------------
    def _make_sequence(self, prompt: Prompt, params: SamplingParams) -> Sequence:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("this checkpoint has no tokenizer.json: pass prompts as lists of token ids")
            # the tokenizer's defaults, as an HF user gets them: a BOS-adding tokenizer adds BOS
            token_ids, text = self.tokenizer(prompt)["input_ids"], prompt
        else:
            token_ids, text = token_ids_of(prompt), None
        if not token_ids:
            raise ValueError("empty prompt: give at least one token (a non-empty string or id list)")
        vocab = self.model_config.vocab_size
        bad = [t for t in token_ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary [0, {vocab}): "
                             "was the prompt tokenized for another model?")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(f"prompt has {len(token_ids)} tokens but max_model_len={self.max_model_len} "
                             "leaves no room to generate: shorten the prompt or raise max_model_len")
        bad_stops = [t for t in params.stop_token_ids if t >= vocab]
        if bad_stops:
            raise ValueError(f"stop token id {bad_stops[0]} is outside the vocabulary [0, {vocab})")
        if not self.config.chunked_prefill and len(token_ids) > self.config.max_num_batched_tokens:
            raise ValueError(f"prompt has {len(token_ids)} tokens, more than max_num_batched_tokens="
                             f"{self.config.max_num_batched_tokens} with chunked_prefill=False: "
                             "enable chunked_prefill or raise max_num_batched_tokens")
        # KV slots: every token but the last sampled one, whose K/V is never computed
        longest = min(len(token_ids) + params.max_tokens, self.max_model_len) - 1
        needed = self.block_manager.blocks_for(longest)
        if needed > self.block_manager.num_blocks:
            raise ValueError(f"a request of up to {longest + 1} tokens needs {needed} KV blocks but the cache "
                             f"has only {self.block_manager.num_blocks}: lower max_tokens or give the cache "
                             "more memory (num_kv_blocks, kv_cache_gib or gpu_memory_utilization)")
        seq = Sequence(self._next_id, token_ids, params, prompt=text)
        seq.generator = self.runner.sampler.generator_for(params)
        self._next_id += 1
        return seq

    def _make_sequences(self, prompts, params) -> list[Sequence]:
        """Validate every request before any is queued: one bad request costs nothing else.
        A wrong type is a TypeError, a wrong value a ValueError (the first error's kind)."""
        self._check_open()
        prompts = prompt_list(prompts)
        params = params_list(params, len(prompts))
        seqs, errors = [], []
        for index, (prompt, p) in enumerate(zip(prompts, params)):
            try:
                seqs.append(self._make_sequence(prompt, p))
            except (ValueError, TypeError) as err:
                errors.append((type(err), f"request {index}: {err}"))
        if errors:
            raise errors[0][0]("; ".join(text for _, text in errors) + " (no request was queued)")
        return seqs

    def _queue(self, prompts, params) -> list[Sequence]:
        seqs = self._make_sequences(prompts, params)
        for seq in seqs:
            self.scheduler.add(seq)
        return seqs

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None) -> int:
        """Queue one request; its tokens come back from step()."""
        return self._queue([prompt], params)[0].request_id

    def _queue_chats(self, conversations, params) -> list[Sequence]:
        self._check_open()
        ids, texts = chat_prompts(self.tokenizer, conversations, self.config.model)
        seqs = self._queue(ids, params)
        for seq, text in zip(seqs, texts):
            seq.prompt = text
        return seqs

    def abort(self, seqs: list[Sequence]) -> None:
        """Drop these requests if unfinished (frees their blocks)."""
        if self._stepping:   # (a stream garbage-collected mid-step): after the step
            self._deferred_aborts += seqs
            return
        for seq in seqs:
            if seq.is_finished:
                continue
            if seq in self.scheduler.running:
                self.scheduler.finish(seq, "abort")
            else:
                self.scheduler.waiting.remove(seq)
                seq.status, seq.finish_reason = Status.FINISHED, "abort"
            if (queue := self._listeners.get(seq.request_id)) is not None:   # a stream's: to end it (stream.py)
                queue.append(seq)
        self._forget_finished_round()

    def _release(self, seqs: list[Sequence]) -> None:
        """A stream is done with these requests: stop routing their tokens and abort what is left."""
        for seq in seqs:
            self._listeners.pop(seq.request_id, None)
        self.abort(seqs)

    def abort_all(self) -> int:
        """Drop every unfinished request; returns how many were dropped."""
        pending = list(self.scheduler.running) + list(self.scheduler.waiting)
        self.abort(pending)
        return len(pending)

    # The step loop -----------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self.runner is None:
            raise RuntimeError("this engine is closed (close() or the end of a `with` block): create a new LLM")

    def step(self) -> list[tuple[Sequence, int]]:
        """Run one engine step (with decode_steps > 1, up to that many decode steps); return
        (sequence, new token) for every token produced, in order ([] when nothing is queued).
        Tokens of requests a stream owns also go to that stream's queue."""
        self._check_open()
        if not self.scheduler.has_unfinished():
            return []
        self._stepping = True
        try:
            produced = self._step()
            for seq, _ in produced:
                queue = self._listeners.get(seq.request_id)
                if queue is not None:
                    queue.append(seq)
        except BaseException:   # (Ctrl-C, a CUDA error) mid-step
            # async_rounds: a launched round's inputs assume the round before it was read whole;
            # forget it, and the next schedule() continues from what the host has
            self._launched = None
            raise
        finally:
            self._stepping = False
            deferred, self._deferred_aborts = self._deferred_aborts, []
            self.abort(deferred)
        return produced

    def _step(self) -> list[tuple[Sequence, int]]:
        start = time.perf_counter()
        hits, preemptions = self.block_manager.prefix_hit_tokens, self.scheduler.num_preemptions
        if self._launched is None:
            scheduled = self.scheduler.schedule()
            if not scheduled:
                raise RuntimeError("scheduler made no progress with requests pending; please report this")
            num_steps = 1
            if self._decode_steps > 1:
                num_steps = self.scheduler.plan_decode_steps(scheduled, self._decode_steps, self.max_model_len)
            self.stats.host_seconds["schedule"] += time.perf_counter() - start
            if num_steps > 1 and self.config.async_rounds:   # launched here, read below
                self._launched = self.runner.launch_scheduled_round(scheduled, num_steps, self.stats.host_seconds)
        if self._launched is not None:   # async_rounds: the next round goes to the GPU before this one is read
            launched, self._launched = self._launched, self._launch_next_round(self._launched)
            scheduled, num_steps = [(seq, 1) for seq in launched.seqs], launched.num_steps
            new_tokens, logits = self.runner.read_round(launched, self.stats.host_seconds), {}
        elif num_steps > 1:
            new_tokens, logits = self.runner.execute_decode_steps(scheduled, num_steps, self.stats.host_seconds), {}
        else:
            tokens, logits = self.runner.execute(scheduled, self.stats.host_seconds)
            new_tokens = [[] if token is None else [token] for token in tokens]
        now = time.perf_counter()
        produced, kinds, processed = [], set(), {"prefill": 0, "decode": 0}   # processed: tokens through the model
        for index, ((seq, n), seq_tokens) in enumerate(zip(scheduled, new_tokens)):
            if seq.is_finished:   # async_rounds: it stopped in the round before, or was aborted
                continue
            phase = "prefill" if seq.num_computed_tokens < seq.num_prompt_tokens else "decode"
            kinds.add(phase)
            processed[phase] += n
            seq.num_computed_tokens += n
            self.block_manager.commit_computed(seq)
            for i, token in enumerate(seq_tokens):   # none for a prompt chunk that samples nothing
                if i:   # multi-step: the previous token went through the model in this step
                    seq.num_computed_tokens += 1
                    processed["decode"] += 1
                    self.block_manager.commit_computed(seq)
                seq.token_ids.append(token)
                if index in logits:
                    seq.logits.append(logits[index])
                if seq.stats.first_token_time is None:
                    seq.stats.first_token_time = now
                produced.append((seq, token))
                reason = self._stop_reason(seq, token)
                if reason:   # multi-step: the sequence's later tokens are dropped
                    seq.stats.finish_time = now
                    self.scheduler.finish(seq, reason)
                    break
        self._forget_finished_round()   # all its sequences stopped in the round just read
        self.stats.steps += num_steps
        self.stats.prefill_tokens += processed["prefill"]
        self.stats.decode_tokens += processed["decode"]
        self.stats.preemptions = self.scheduler.num_preemptions
        self.stats.prefix_hit_tokens = self.block_manager.prefix_hit_tokens
        end = time.perf_counter()
        self.stats.host_seconds["postprocess"] += end - now
        self.stats.step_seconds.append(end - start)
        kind = kinds.pop() if len(kinds) == 1 else "mixed"
        self.stats.step_kind_seconds[kind] += end - start
        self.stats.step_kind_tokens[kind] += processed["prefill"] + processed["decode"]
        self.telemetry.record(self, kind=kind, start=start, end=end, model_steps=num_steps, tokens=processed,
                              prefix_hit_tokens=self.stats.prefix_hit_tokens - hits,
                              preemptions=self.stats.preemptions - preemptions)
        return produced

    def _launch_next_round(self, launched: LaunchedRound) -> LaunchedRound | None:
        """async_rounds: launch the round after `launched` (not read yet) for the sequences that
        go on, their first input tokens its last samples, on the GPU; None if there is none now."""
        ahead, t0 = launched.num_steps, time.perf_counter()
        rows, steps = self.scheduler.plan_next_round(launched.seqs, ahead, self._decode_steps, self.max_model_len)
        t1 = time.perf_counter()
        self.stats.host_seconds["schedule"] += t1 - t0
        if not steps:
            return None
        seqs = [launched.seqs[row] for row in rows]
        step = decode_step_at([seq.block_table for seq in seqs], [len(seq) - 1 + ahead for seq in seqs],
                              self.config.block_size)
        first_tokens = launched.last_samples(rows)
        self.stats.host_seconds["prepare"] += time.perf_counter() - t1
        return self.runner.launch_round(seqs, steps, step, first_tokens, ahead, self.stats.host_seconds)

    def _forget_finished_round(self) -> None:
        """async_rounds: a launched round whose sequences all finished (a stop in the round before,
        an abort) is never read. Nothing waits for it: whatever reuses its blocks or buffers is
        queued after it on the same stream, and PyTorch's pinned-memory allocator keeps its
        tokens' host buffer until their copy is done."""
        if self._launched is not None and all(seq.is_finished for seq in self._launched.seqs):
            self._launched = None

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if (token in self._eos and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if seq.num_output_tokens >= p.max_tokens or len(seq) >= self.max_model_len:
            return "length"
        return None

    def _decode(self, token_ids: list[int]) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)

    def _output(self, seq: Sequence) -> RequestOutput:
        return RequestOutput(seq.request_id, seq.prompt, seq.token_ids[:seq.num_prompt_tokens],
                             seq.output_token_ids, self._decode(seq.output_token_ids),
                             seq.finish_reason, seq.stats,
                             torch.stack(seq.logits) if seq.logits else None)

    # Front doors -------------------------------------------------------------------------------
    def generate(self, prompts: Prompt | list[Prompt], params: SamplingParams | list[SamplingParams] | None = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Run the requests to completion; outputs come back in prompt order."""
        return self._run(self._queue(prompts, params), use_tqdm)

    def _run(self, seqs: list[Sequence], use_tqdm: bool) -> list[RequestOutput]:
        """Step until these requests finish (others queued meanwhile advance too, and streams
        get their tokens); the bar counts finished requests of this call."""
        with tqdm(total=len(seqs), desc="generate", unit="req", disable=not use_tqdm or len(seqs) < 2) as bar:
            try:
                while (done := sum(seq.is_finished for seq in seqs)) < len(seqs):
                    bar.update(done - bar.n)
                    self.step()
                bar.update(done - bar.n)
            except BaseException:   # an error or Ctrl-C mid-run: free the blocks, leave a clean engine
                self.abort(seqs)
                raise
        return [self._output(seq) for seq in seqs]

    def stream(self, prompts: Prompt | list[Prompt],
               params: SamplingParams | list[SamplingParams] | None = None) -> Iterator[StreamEvent]:
        """Queue the requests now and return an iterator of their tokens as they are sampled
        (interleaved across requests). Streams and generate() calls may be interleaved freely:
        each stream gets exactly its own events. close() it (or break) to abort what is left."""
        return RequestStream(self, self._queue(prompts, params))

    def chat(self, messages: Conversation | list[Conversation],
             params: SamplingParams | list[SamplingParams] | None = None,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """generate() for one conversation (or a list of them), formatted by the tokenizer's chat
        template with the assistant's turn opened (add_generation_prompt=True)."""
        return self._run(self._queue_chats(messages, params), use_tqdm)

    def chat_stream(self, messages: Conversation | list[Conversation],
                    params: SamplingParams | list[SamplingParams] | None = None) -> Iterator[StreamEvent]:
        """stream() for conversations, as chat() formats them."""
        return RequestStream(self, self._queue_chats(messages, params))

    # Introspection and lifecycle ---------------------------------------------------------------
    def describe(self) -> str:
        """What actually runs: device, dtype, each switch, the KV cache, warm-up costs."""
        self._check_open()
        return describe_engine(self)

    def close(self) -> None:
        """Free the weights, KV cache and graphs so another engine fits in the same process."""
        if self.runner is not None:
            if self._launched is not None:
                self._launched.read()   # the round ends before its weights and cache are freed
                self._launched = None
            self.runner.close()
            self.runner = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
