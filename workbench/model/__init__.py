"""The model: HF config -> decoder -> weights from safetensors; plus a checkpoint maker."""
from .checkpoint import PRESETS, make_checkpoint, random_checkpoint
from .config import SUPPORTED_MODEL_TYPES, ModelConfig
from .loader import load_model
from .qwen3 import CausalLM

__all__ = ["PRESETS", "SUPPORTED_MODEL_TYPES", "CausalLM", "ModelConfig", "load_model", "make_checkpoint",
           "random_checkpoint"]
