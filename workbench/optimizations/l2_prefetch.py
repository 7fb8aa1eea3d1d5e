"""EngineConfig.l2_prefetch (measured on an H200: slower, so off; see the end): while a decode GEMV
runs, its programs ask L2 for the weights of the matmul that runs next -- so HBM keeps streaming
weights across the kernel boundaries of a batch-1 step, where otherwise it idles.

Why. A batch-1 decode step is a chain of small kernels, each waiting for the one before (under
PDL: `gdc_wait`). A GEMV reads its own weights early (before its wait: kernels/gemv.py), but only
once its programs find room on an SM, and after the wait what is left -- load x, multiply, reduce,
store, let the next kernel go -- reads no weight at all. Measured on an H200 (sessions 13-14,
docs/perf-notes.md): a step takes ~683-688 us of GPU time for ~1.19 GB of bytes, ~0.29 ms at the
copy bandwidth: HBM is busy ~40 % of the time. Persistent "megakernels" reach 65-80 % by streaming the next operation's
weights while the current one finishes; this rung borrows that one idea without the megakernel:
the weights are known ahead, so the kernel before can start their transfer.

How. Each GEMV program issues `prefetch.global.L2` for its share of the next weight's 128-byte
lines (compiled to `CCTL.E.PF2`: a hint, fire and forget -- no register holds the bytes, nothing
waits for them), right after its own first weight tile is requested and before its PDL wait. The
next GEMV then finds its weights in L2 (50 MB on an H200; the largest layer weight, gate_up, is
12.6 MB). Values are untouched: a prefetch moves bytes between memories, never changes one, so
the tokens are exactly those without it.

The order is the model's: per layer qkv_proj -> o_proj -> gate_up_proj -> down_proj, then the next
layer's qkv_proj. The last down_proj prefetches the LM head's first bytes, as many as a qkv_proj
(what the LM head's first programs read): the whole head (311 MB at Qwen3-0.6B's shape) does not
fit in L2, and it already streams near the copy bandwidth. (A tensor there, not None, shaped as a
qkv_proj weight: every layer's attribute the same kind and shape, so torch.compile's guards see
one layer form.)
The LM head prefetches nothing: its own pass through L2 would evict the next step's first layer
before use. Attention's K/V and the small kernels are left alone.

Installed: `install(model, on)` sets `prefetch_next` on each Linear (workbench/parallel/
tensor_parallel.py), which the decode GEMV (decode_gemv) and its folded forms (fused_decode) pass
to the kernel; the F.linear path ignores it. Needs one of those two switches (LLM refuses it
otherwise); with fused_decode alone, o_proj and down_proj run F.linear and prefetch nothing. `prefetch_next`
is a plain alias of the next weight's storage, set after the model is built and on its device:
moving or replacing a weight afterwards needs install() again.
Measurement: scripts/ab_decode_candidates.py's variant l2-prefetch (device_check.sh decode-ab),
`measure hbm --warm-l2` for where the bytes move; the prediction is in docs/perf-notes.md
(session 14), the look back in session 15's section. Measured on an H200 (session 15, all on,
greedy 128 + 512, 2 rounds; docs/results/decode-ab-l2-prefetch-h200.json, hbm-l2-{off,on}-h200.json):
the prefetches land -- each GEMV's DRAM reads become the next weight's (layer 0: o_proj 4.2 ->
12.1 MB, gate_up 12.6 -> 7.2 MB), the step's total unchanged (1.271 vs 1.264 GB) -- but the step got slower,
680 -> 706 us (1,472 -> 1,389 tok/s; two ahead: 687 us). Moving a weight's DRAM reads into the
kernel before does not make HBM busier: that kernel then runs as long as the next weight takes to
stream, and the bytes still queue behind the kernel boundary. So it stays off: a lesson, not a rung.
"""
from __future__ import annotations

from workbench.parallel.tensor_parallel import Linear


def why_not(opts) -> str | None:
    """Why l2_prefetch cannot act under these switches (None: it can)."""
    if not (opts.decode_gemv or opts.fused_decode):
        return "it prefetches for the Triton decode GEMV, but decode_gemv and fused_decode are both off"
    return None


def layer_matmuls(model) -> list[Linear]:
    """The decoder layers' linear layers, in the order a step runs them (the LM head after them)."""
    order = []
    for layer in model.layers:
        order += [layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj]
    return order


def install(model, on: bool, ahead: int = 1) -> None:
    """Set each linear layer's `prefetch_next`: the weight of the matmul `ahead` places after it
    (on; 1: the next one -- the A/B script tries 2, more time for the bytes to arrive, more of L2
    held), or None (off; the LM head always: see the docstring)."""
    if not 1 <= ahead <= 4:
        raise ValueError(f"ahead={ahead}: 1 to 4 matmuls (a layer has four)")
    order = layer_matmuls(model)
    for linear in [*order, model.lm_head]:
        linear.prefetch_next = None
    if not on:
        return
    for i, linear in enumerate(order):   # .detach(): a tensor, not a Parameter: not registered as its own
        if i + ahead < len(order):
            linear.prefetch_next = order[i + ahead].weight.detach()
    # The last `ahead` matmuls: the LM head's first bytes, in pieces shaped as what the same matmul
    # of the layer before hands on (so every layer's attribute has one shape: torch.compile's guards)
    flat_head, start = model.lm_head.weight.detach().view(-1), 0
    for i in range(max(0, len(order) - ahead), len(order)):
        like = order[i + ahead - 4].weight
        order[i].prefetch_next = flat_head[start:start + like.numel()].view(like.shape)
        start += like.numel()


# -- The side-stream form (session 17; an A/B candidate, not yet a switch) ---------------------
# Session 15's lesson: a prefetch issued by a GEMV lengthens that GEMV; the bus idles during
# attention's short dependent kernels (q/k-norm-RoPE, the split, the merge), which read almost
# nothing. Here no kernel of the step issues it: at each layer's decode attention a prefetch-only
# kernel goes to a stream of its own (forked from the step's stream after q/k/v are written), asking
# L2 for the weights the layer reads after attention -- gate_up and down (18.9 MB at Qwen3-0.6B's
# shape), and with "mlp+qkv" the next layer's qkv too. The step's kernels never wait for it: the
# side stream rejoins once, before the LM head (a graph capture needs every forked stream joined;
# every captured step computes logits). An eager step that samples nothing (a prompt's 1-token
# chunk) leaves it forked until the next step that does: harmless, a prefetch moves no value.

SIDE_FORMS = {"mlp": ("gate_up_proj", "down_proj"), "mlp+qkv": ("gate_up_proj", "down_proj", "next qkv_proj")}


class SidePrefetch:
    def __init__(self, model, form: str):
        import torch

        from workbench.kernels.gemv import prefetch_l2
        self.prefetch_l2 = prefetch_l2   # imported once here, not at each layer's fork
        self.stream = torch.cuda.Stream(device=model.lm_head.weight.device)
        self.forked = False
        layers = list(model.layers)
        self.weights = []
        for i, layer in enumerate(layers):
            ws = [layer.mlp.gate_up_proj.weight.detach(), layer.mlp.down_proj.weight.detach()]
            if "next qkv_proj" in SIDE_FORMS[form] and i + 1 < len(layers):
                ws.append(layers[i + 1].self_attn.qkv_proj.weight.detach())
            self.weights.append(ws)

    def at_layer(self, i: int) -> None:
        import torch
        self.stream.wait_stream(torch.cuda.current_stream())   # after this layer's q, k, v
        with torch.cuda.stream(self.stream):
            for w in self.weights[i]:
                self.prefetch_l2(w)
        self.forked = True

    def join(self) -> None:
        import torch
        if self.forked:
            torch.cuda.current_stream().wait_stream(self.stream)
            self.forked = False


def install_side(model, form: str | None) -> None:
    """Install (form in SIDE_FORMS) or remove (None) the side-stream prefetch on a built model."""
    for layer in model.layers:
        layer.self_attn.side_prefetch = None
    model.__dict__.pop("compute_logits", None)   # the class's own again
    if form is None:
        return
    if form not in SIDE_FORMS:
        raise ValueError(f"side prefetch form {form!r}: choose from {list(SIDE_FORMS)}")
    side = SidePrefetch(model, form)
    for i, layer in enumerate(model.layers):
        layer.self_attn.side_prefetch = lambda i=i: side.at_layer(i)
    compute_logits = type(model).compute_logits.__get__(model)

    def join_then_logits(hidden):
        side.join()
        return compute_logits(hidden)
    model.compute_logits = join_then_logits


# -- From inside decode attention (session 19; an A/B candidate, measured slower in session 20) --
# The side-stream form above made the attention split slower: the prefetch traffic beside it, or
# the fork and join in the graph costing PDL's overlap -- its run could not tell. This form asks
# the same of the split kernel's own programs (kernels/decode_attention.py, Choice 6): no stream
# forked, no kernel added. One weight a layer: its gate_up_proj, the GEMV that adds the most beyond
# its bytes' time (docs/perf-notes.md, session 19, where a layer's time goes). Measured on an H200
# (session 20): 1,502 -> 1,442 tok/s; the split grew ~1.9 us a layer without a fork, so the bus,
# not the fork, is what slows it, and gate_up with its weight in L2 still adds ~5.5 us.

def install_attention(model, on: bool) -> None:
    """Have each layer's Triton decode attention ask L2 for the layer's gate_up weight (on), or not.
    After decode_attention.install, which builds the wrappers that hold it (the runner's order)."""
    from .decode_attention import DecodeThenBackend
    for layer in model.layers:
        backend = layer.self_attn.backend
        if not isinstance(backend, DecodeThenBackend):
            if not on:
                continue   # nothing to take away
            raise RuntimeError("install_attention prefetches from the Triton decode attention: "
                               "turn the decode_attention switch on first")
        backend.prefetch_next = layer.mlp.gate_up_proj.weight.detach() if on else None

