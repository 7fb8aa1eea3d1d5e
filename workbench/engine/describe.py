"""`LLM.describe()`: what actually runs, one line a switch -- the device and dtype, each switch
as it was resolved on this machine (a switch the machine cannot run says so), the KV cache, the
warm-up costs and any student overrides."""
from __future__ import annotations

import torch

from workbench.parallel.tensor_parallel import backend_for

from .overrides import describe_overrides


def describe_engine(llm) -> str:
    o, r = llm.opts, llm.runner
    gpu = f" ({torch.cuda.get_device_name(r.device)})" if llm.device.startswith("cuda") else ""
    attention = o.attention
    if attention == "flash":
        from workbench.attention.flash import flash_status
        attention = f"flash ({flash_status()[0]})"
    tp_text = "off (1 rank)"
    if r.tp_size > 1:
        tp_text = f"{r.tp_size} ranks ({backend_for(llm.device)}), each with 1/{r.tp_size} of the heads"
    fused_text = "on (Triton kernels)" if o.fused_kernels else "off (plain torch ops)"
    if o.fused_kernels and llm.model_config.hidden_act != "silu":   # the SwiGLU kernel is silu only
        fused_text += f"; the {llm.model_config.hidden_act} activation runs in plain torch"
    fdec_text = "off (norm and activation are kernels of their own)"
    if o.fused_decode:
        fdec_text = "on (<= 16 tokens: RMSNorm and SiLU-and-mul inside the Triton GEMV; q/k norm + RoPE + KV write one kernel)"
        if llm.model_config.hidden_act != "silu":
            fdec_text += f"; the {llm.model_config.hidden_act} activation is not folded"
    lines = [
        f"model      {llm.config.model} ({llm.model_config.model_type}, "
        f"{llm.model_config.num_layers} layers, hidden {llm.model_config.hidden_size})",
        f"device     {llm.device}{gpu}, {str(llm.dtype).removeprefix('torch.')}",
        f"attention  {attention}",
        f"fused      {fused_text}",
        f"gemv       {'on (Triton decode GEMV, <= 16 tokens)' if o.decode_gemv else 'off (torch F.linear: cuBLAS on a GPU)'}",
        f"fdec       {fdec_text}",
        f"dattn      {'on (Triton split-KV kernel, decode steps)' if o.decode_attention else 'off'}",
        f"graphs     {'on, buckets ' + str(r.graphs.buckets) if r.graphs else 'off (eager decode)'}",
        f"prefill    {_prefill_text(r)}",
        f"compile    {_compile_text(llm)}",
        f"rounds     {_rounds_text(llm.config)}",
        f"sampling   {_sampling_text(llm.config)}",
        f"pdl        {'on (programmatic dependent launch of the decode kernels)' if o.pdl else 'off'}",
        f"l2         {_l2_text(llm.config)}",
        f"tensor parallel  {tp_text}",
        f"kv cache   {r.num_kv_blocks} blocks x {llm.config.block_size} tokens "
        f"({r.num_kv_blocks * r.kv_bytes_per_block / 2**30:.2f} GiB{' per rank' if r.tp_size > 1 else ''}), "
        "prefix caching "
        f"{'on' if llm.config.enable_prefix_caching else 'off'}, chunked prefill "
        f"{'on' if llm.config.chunked_prefill else 'off'}",
    ]
    lines += [f"warm-up    {k} = {v:.2f}" for k, v in r.timings.items()]
    lines += [f"skipped    {note}" for note in llm.skipped]
    if llm.overrides:
        lines.append(f"overrides  {describe_overrides(llm.overrides)}")
    return "\n".join(lines)


def _l2_text(cfg) -> str:
    if cfg.l2_prefetch:
        return "each decode GEMV asks L2 for the next matmul's weights (l2_prefetch)"
    return "off (l2_prefetch: slower on an H200, docs/perf-notes.md session 15)"


def _prefill_text(runner) -> str:
    if runner.prefill_graphs is None:
        return "eager (no prefill graphs)"
    sizes = ", ".join(str(n) for n in runner.prefill_graphs.buckets)
    return (f"one sequence's prefill replayed from a graph, padded to {sizes} tokens (prefill_graph_sizes; "
            "two graphs or more slowed decoding on an H200, docs/perf-notes.md session 16)")


def _compile_text(llm) -> str:
    if not llm.opts.compile:
        return "off"
    return "on (torch.compile)" + ("" if llm.config.compile_prefill else "; prefill steps run the plain forward")


def _rounds_text(cfg) -> str:
    if cfg.decode_steps == 1:
        return "1 decode step a schedule (multi-step off)"
    kind = "a round without top-k/top-p rows" if cfg.graph_sampling else "a greedy round"
    extras = [text for on, text in ((cfg.graph_rounds, f"{kind} one graph replay"),
                                    (cfg.async_rounds, "the next round launched before this one is read"))
              if on]
    return f"{cfg.decode_steps} decode steps a round" + "".join(f"; {text}" for text in extras)


def _sampling_text(cfg) -> str:
    if not cfg.fused_sampling:
        return "eager (torch ops; all-greedy batches: torch's argmax)"
    if cfg.graph_sampling:
        return ("fused Triton pair (Gumbel-max) recorded in each decode graph after the LM head, every row "
                "(graph_sampling); top-k/top-p rows sampled again eagerly")
    return ("fused Triton pair (Gumbel-max) after each step's forward; all-greedy batches: torch's argmax; "
            "top-k/top-p rows eager")
