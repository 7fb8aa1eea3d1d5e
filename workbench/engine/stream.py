"""Streams: each stream() call gets exactly its own tokens, however callers interleave.

One engine can serve several consumers at once -- two streams read side by side, a generate()
between two next() calls. Whoever steps the engine (a stream's next(), generate(), step()) makes
tokens for every running request, so the engine routes each new token to its owner: a stream
registers a queue for its requests (LLM._listeners), and reads only that queue. Nothing is lost
when someone else steps, and nobody sees another's tokens.

Closing a stream (close(), the end of a for loop with break, or the stream being garbage
collected) aborts its unfinished requests, which frees their KV blocks. A request aborted by
someone else (LLM.abort_all()) still ends its stream's events with one marked finished
(finish_reason "abort"): the engine routes the aborted request to its queue like a token.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .sequence import Sequence


@dataclass
class StreamEvent:
    request_id: int
    token_id: int | None          # None: the request was aborted and this event carries no token
    text: str                     # the text this token adds
    finished: bool
    finish_reason: str | None = None


class RequestStream:
    """Iterator of StreamEvents for some requests already queued in `llm` (see LLM.stream)."""

    def __init__(self, llm, seqs: list[Sequence]):
        self._llm, self._seqs = llm, seqs
        self._queue: deque[Sequence] = deque()   # one entry per new token, in the order they came
        self._seen = {seq.request_id: 0 for seq in seqs}   # output tokens streamed so far
        self._texts = {seq.request_id: "" for seq in seqs}
        self._ended: set[int] = set()   # requests whose finished event has been given
        self._closed = False
        for seq in seqs:
            llm._listeners[seq.request_id] = self._queue

    def __iter__(self) -> "RequestStream":
        return self

    def __next__(self) -> StreamEvent:
        try:
            while True:
                while not self._queue:
                    if self._closed or all(seq.is_finished for seq in self._seqs):
                        raise StopIteration
                    self._llm.step()   # routes new tokens (and aborts) of ours into self._queue
                event = self._event(self._queue.popleft())
                if event is not None:
                    return event
        except BaseException:   # the end, an error, or Ctrl-C: drop what is left
            self.close()
            raise

    def _event(self, seq: Sequence) -> StreamEvent | None:
        rid = seq.request_id
        if rid in self._ended:   # an abort after the request's last token was already read as finished
            return None
        if self._seen[rid] == seq.num_output_tokens:   # no new token: LLM.abort routed it here
            self._ended.add(rid)
            return StreamEvent(rid, None, "", True, seq.finish_reason)
        self._seen[rid] += 1
        n = self._seen[rid]
        finished = seq.is_finished and n == seq.num_output_tokens
        text = self._llm._decode(seq.output_token_ids[:n])
        if text.endswith("\ufffd") and not finished:
            text = self._texts[rid]   # half a multi-byte character: wait for the rest
        delta, self._texts[rid] = text[len(self._texts[rid]):], text
        if finished:
            self._ended.add(rid)
        return StreamEvent(rid, seq.output_token_ids[n - 1], delta, finished,
                           seq.finish_reason if finished else None)

    def close(self) -> None:
        """Stop reading: abort this stream's unfinished requests and free their KV blocks."""
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._llm._release(self._seqs)

    def __del__(self):   # abandoned without close(): the garbage collector ends it
        try:
            self.close()
        except Exception:   # (at interpreter exit the engine may be half torn down)
            pass
