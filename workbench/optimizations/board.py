"""The switchboard: `Optimizations` (one field a switch), its presets, and the ONE place that
decides whether a switch can run here (`why_not`, asked by LLM, the dashboard, the CLI and doctor).

Each switch has its own module beside this one (attention, fused_kernels, decode_gemv,
fused_decode, decode_attention, cuda_graphs, compile, pdl, multi_step): what it attacks, its chapter and
measurement, its own `why_not(device, tp_size)`, and how it is installed. This file only collects them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from . import attention, cuda_graphs, decode_attention, decode_gemv, fused_decode, fused_kernels, pdl
from . import compile as torch_compile

ATTENTION_BACKENDS = attention.BACKENDS
# switch name -> its module (the order of the dashboard's buttons and of label())
SWITCHES = {"flash": attention, "fused_kernels": fused_kernels, "decode_gemv": decode_gemv,
            "fused_decode": fused_decode, "decode_attention": decode_attention, "cuda_graphs": cuda_graphs,
            "compile": torch_compile, "pdl": pdl}


def why_not(device: str, tp_size: int = 1) -> dict[str, str]:
    """Every switch that cannot run on `device` with `tp_size` ranks -> why (a sentence)."""
    reasons = {name: module.why_not(device, tp_size) for name, module in SWITCHES.items()}
    return {name: why for name, why in reasons.items() if why is not None}


@dataclass(frozen=True)
class Optimizations:
    """One field a switch; each module in workbench/optimizations/ says what it attacks:

    attention      naive | sdpa | flash: attention's HBM traffic            (attention.py)
    fused_kernels  residual-add+RMSNorm, SwiGLU, RoPE as Triton kernels     (fused_kernels.py)
    decode_gemv    linear layers at <= 16 tokens as a Triton split-K GEMV   (decode_gemv.py)
    fused_decode   at <= 16 tokens, RMSNorm and SiLU-and-mul inside the GEMV, q/k norm + RoPE +
                   KV-cache write as one kernel (fused_decode.py)
    decode_attention  a decode step's attention as a Triton split-KV kernel (decode_attention.py)
    cuda_graphs    capture decode per batch-size bucket, replay             (cuda_graphs.py)
    compile        torch.compile the model forward                          (compile.py)
    pdl            programmatic dependent launch of the decode kernels (sm_90+: all_on
                   drops it elsewhere, with a note)                         (pdl.py)
    (decode_steps, multi-step decoding, is an EngineConfig field: multi_step.py)
    """

    attention: str = "sdpa"
    fused_kernels: bool = False
    decode_gemv: bool = False
    fused_decode: bool = False
    decode_attention: bool = False
    cuda_graphs: bool = False
    compile: bool = False
    pdl: bool = False
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
    def enforce_eager(cls, attention: str = "sdpa", fused_kernels: bool = False,
                      decode_gemv: bool = False, fused_decode: bool = False,
                      decode_attention: bool = False, pdl: bool = False) -> "Optimizations":
        """Eager launches, for debugging (readable stack traces, no capture, no compiler): no CUDA
        graphs and no torch.compile; attention and the kernels stay as chosen (vLLM's meaning)."""
        return cls(attention=attention, fused_kernels=fused_kernels, decode_gemv=decode_gemv,
                   fused_decode=fused_decode, decode_attention=decode_attention, pdl=pdl, from_preset=True)

    @classmethod
    def all_on(cls) -> "Optimizations":
        """Every switch measured to pay (pdl since session 7: 1.10x tok/s on an H200). On a CPU
        the CUDA-only switches are dropped and reported as skipped (pdl also below Hopper)."""
        return cls(attention="flash", fused_kernels=True, decode_gemv=True, fused_decode=True, decode_attention=True,
                   cuda_graphs=True, compile=True, pdl=True, from_preset=True)

    @classmethod
    def preset(cls, name: str) -> "Optimizations":
        presets = {"all_off": cls.all_off, "enforce_eager": cls.enforce_eager, "all_on": cls.all_on,
                   "default": lambda: cls(from_preset=True)}
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(presets)}")
        return presets[name]()

    def eager(self) -> "Optimizations":
        """This setting with eager launches: no CUDA graphs, no compile."""
        return dataclasses.replace(self, cuda_graphs=False, compile=False)

    def switched_on(self) -> list[str]:
        """The names (as in SWITCHES) of the switches this setting turns on."""
        return [name for name in SWITCHES
                if (self.attention == "flash" if name == "flash" else getattr(self, name))]

    def label(self) -> str:
        """Short human label, e.g. 'flash+fused+graphs'."""
        short = {"fused_kernels": "fused", "decode_gemv": "gemv", "fused_decode": "fdec", "decode_attention": "dattn",
                 "cuda_graphs": "graphs", "compile": "compile", "pdl": "pdl"}
        return "+".join([self.attention] + [short[n] for n in self.switched_on() if n != "flash"])

    def why_not(self, device: str, tp_size: int = 1) -> dict[str, str]:
        """The switches set here that cannot run on `device` with `tp_size` ranks -> why. Only the
        switches that are on are asked: asking flash imports flash-attn, seconds on a GPU."""
        reasons = {name: SWITCHES[name].why_not(device, tp_size) for name in self.switched_on()}
        return {name: why for name, why in reasons.items() if why is not None}

    def resolve(self, device: str, tp_size: int = 1) -> tuple["Optimizations", list[str]]:
        """Return (what will run on `device`, notes on what was skipped and why).

        Asked for directly, a switch this machine cannot run is an error; asked for through a
        preset, it is dropped and the drop is reported -- never silently ignored.
        """
        blocked = self.why_not(device, tp_size)
        if blocked and not self.from_preset:
            raise ValueError("; ".join(f"{_setting(name)}: {why}" for name, why in blocked.items())
                             + ". Turn these off (on a CPU: attention='sdpa' or 'naive', no fused_kernels, "
                             "decode_gemv, fused_decode, decode_attention, cuda_graphs or pdl), or use a preset such as "
                             "Optimizations.all_on(), which drops them with a note")
        off = {name: ("sdpa" if name == "flash" else False) for name in blocked}
        if "flash" in off:
            off["attention"] = off.pop("flash")
        notes = [f"{_setting(name)}: skipped, {why}" for name, why in blocked.items()]
        return dataclasses.replace(self, **off), notes


def _setting(name: str) -> str:
    return "attention='flash'" if name == "flash" else f"{name}=True"
