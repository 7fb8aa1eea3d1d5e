"""workbench: a small, readable LLM inference engine whose optimizations are switches.

    from workbench import LLM, SamplingParams, Optimizations
"""
from workbench.config import EngineConfig, Optimizations
from workbench.engine import LLM, RequestOutput, SamplingParams, StreamEvent

__all__ = ["LLM", "EngineConfig", "Optimizations", "RequestOutput", "SamplingParams", "StreamEvent"]
__version__ = "0.1.0"
