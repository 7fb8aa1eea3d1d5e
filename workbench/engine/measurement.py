"""What measurements may ask of an engine: the one method set measure/ and ui/ use.

measure/ and ui/ reach an LLM only through its front doors (generate, add_request, step,
abort_all, describe, stats, opts, model_config) and these methods; they write nothing into the
engine's state. LLM inherits them (engine/llm.py).
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import torch


class MeasurementMethods:
    def timings(self) -> dict[str, float]:
        """Warm-up costs in seconds, as measured at start-up: load_s, and compile_s /
        graph_capture_s when those switches are on."""
        self._check_open()
        return dict(self.runner.timings)

    def prefill_all(self) -> int:
        """Step until no queued prompt has tokens left to prefill, so that the next step is a pure
        decode step; returns the number of steps taken."""
        steps = 0
        while self.scheduler.prefill_pending():
            self.step()
            steps += 1
        return steps

    def generate_arriving(self, prompts: list, params: list, arrival_s: list[float]) -> list:
        """Like generate, but request i joins `arrival_s[i]` seconds after the start (ascending),
        while the engine steps -- as a server sees them. Each request's time to the first token
        counts from its own arrival; the outputs come back in prompt order."""
        if len(arrival_s) != len(prompts) or any(b < a for a, b in zip(arrival_s, arrival_s[1:])):
            raise ValueError("arrival_s: one time per prompt, in seconds from the start, ascending")
        seqs, start = [], time.perf_counter()
        try:
            while len(seqs) < len(prompts) or self.scheduler.has_unfinished():
                now = time.perf_counter() - start
                while len(seqs) < len(prompts) and arrival_s[len(seqs)] <= now:
                    i = len(seqs)
                    seqs += self._queue([prompts[i]], [params[i]])
                if self.scheduler.has_unfinished():
                    self.step()
                else:   # idle until the next request arrives
                    time.sleep(max(arrival_s[len(seqs)] - now, 0.0))
        except BaseException:   # as generate: leave a clean engine
            self.abort(seqs)
            raise
        return [self._output(seq) for seq in seqs]

    @contextmanager
    def decode_steps_override(self, decode_steps: int):
        """Run with `decode_steps` decode steps per round inside the block (e.g. 1, so that one
        step() is one model step when counting launches); the configured value comes back after."""
        if type(decode_steps) is not int or decode_steps < 1:
            raise ValueError(f"decode_steps={decode_steps!r} must be an integer >= 1")
        self._no_round_in_flight()
        saved, self._decode_steps = self._decode_steps, decode_steps
        try:
            yield self
        finally:
            self._decode_steps = saved

    def _no_round_in_flight(self) -> None:
        """async_rounds: while a launched round is unread, the host's view of every sequence is
        a round behind, and the next step() reads that round instead of running one."""
        if self._launched is not None:
            raise RuntimeError("a decode round is in flight (async_rounds): run the requests to the end "
                               "(generate) or abort_all() first, then measure")

    def decode_step_inputs(self):
        """The host inputs (a HostStep: token ids, positions, attention metadata) of the next
        decode step of the running sequences, without running it or changing any state. Call it
        after prefill_all(); every running sequence must already own a slot for its next token."""
        self._check_open()
        self._no_round_in_flight()
        running = list(self.scheduler.running)
        if not running or self.scheduler.prefill_pending():
            raise RuntimeError("no pure decode step is next: queue requests and call prefill_all() first")
        short = [seq.request_id for seq in running if len(seq.block_table) * self.config.block_size < len(seq)]
        if short:
            raise RuntimeError(f"requests {short} need a new KV block for their next token: step() once more")
        return self.runner.prepare([(seq, 1) for seq in running])

    def placement(self) -> dict:
        """Where the engine runs: torch device, dtype, tensor-parallel size and its comm backend."""
        self._check_open()
        from workbench.parallel.tensor_parallel import backend_for
        tp = self.config.tensor_parallel_size
        device = self.runner.device
        return {"device": device, "dtype": self.dtype, "tp_size": tp,
                "backend": backend_for(str(device)) if tp > 1 else "",
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"}
