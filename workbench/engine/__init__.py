"""The engine: requests, scheduling, paged-KV bookkeeping and sampling."""
from .llm import LLM, RequestOutput, StreamEvent
from .sampling_params import SamplingParams

__all__ = ["LLM", "RequestOutput", "SamplingParams", "StreamEvent"]
