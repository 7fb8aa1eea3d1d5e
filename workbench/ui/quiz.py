"""Interactive quiz questions: pick an answer, and a wrong one says where the reasoning broke.

    from workbench.ui.quiz import ask
    ask("03-why-faster")

With ipywidgets (a live notebook) each choice is a button; without a widget front end (a test, a
terminal) the question and every explanation print as text, so nothing is hidden from a reader.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Question:
    prompt: str
    choices: tuple[tuple[str, str], ...]   # (answer, explanation); the explanation says why it is right/wrong
    correct: int


QUESTIONS = {
    # From the source chapter's quiz (chapter 03, 05, 07), then one of ours per chapter.
    "03-why-faster": Question(
        "FlashAttention computes exactly the same result as naive attention. Why is it faster?",
        (("It uses a cheaper approximation of softmax.",
          "No: the online softmax is exact (up to float rounding); the outputs match the naive ones to "
          "within rounding, as the chapter's check shows."),
         ("It does fewer floating-point operations.",
          "No: it does the same matmuls (even a little more: the rescaling). Attention at long N is limited "
          "by memory traffic, not by arithmetic."),
         ("It never writes the N x N score matrix to HBM: tiles stay in on-chip SRAM, so far fewer bytes move.",
          "Right: same math, far less HBM traffic -- the bytes-vs-N measurement above is the evidence."),
         ("It runs on tensor cores and naive attention does not.",
          "No: both use tensor-core matmuls; the difference is what goes to and from HBM between them.")),
        2),
    "03-tiles": Question(
        "In the online softmax, a new key tile raises a row's running max from m to m'. What happens to "
        "the partial sum l and the accumulator acc?",
        (("Nothing: the old tiles are done.",
          "No: they were exponentiated against the old max m; without rescaling they are too large by exp(m' - m)."),
         ("Both are multiplied by exp(m - m') before the new tile is added.",
          "Right: that puts every term on the same max, which is why the final acc / l is exact."),
         ("Only l is rescaled; acc is divided by l at the end anyway.",
          "No: acc holds the same exp(s - m) weights as l; dividing at the end cancels a common factor only "
          "if both carry it.")),
        1),
    "05-decode-not-prefill": Question(
        "nano-vLLM uses CUDA graphs for decode but not for prefill. Why?",
        (("Prefill is compute-bound with a new shape every step; decode has a few fixed shapes (batch "
          "buckets) and is dominated by launch overhead.",
          "Right: a graph replays fixed shapes and addresses, and it only pays where launches, not math, "
          "dominate -- decode's tiny kernels, and also one short prompt's prefill, whose kernels are tiny "
          "too: this engine pads such a prompt to a fixed size and replays it (prefill_graphs)."),
         ("Prefill cannot run on the GPU inside a graph.",
          "No: any fixed-shape GPU work can be captured; the problem is that prefill's shapes change with "
          "every batch of prompts."),
         ("Graphs make prefill results differ from eager ones.",
          "No: a replay runs the kernels that were recorded, on the same data. (A padded graph's matmuls "
          "run at the padded size and may pick other tiles, so logits can differ in the last bits -- as "
          "any change of batch size can -- but that is not why prefill goes without graphs.)"),
         ("Prefill is already as fast as it can be.",
          "No: prefill can be sped up (flash attention, fusion) -- and a long prompt's launch overhead is "
          "a small part of its compute-bound step (a short prompt's is not: see the right answer).")),
        0),
    "05-buckets": Question(
        "Graphs are captured for batch sizes 1, 2, 4, 8, 16, 32, 48, ... A decode step has 20 sequences. "
        "What runs?",
        (("The graph for 16, twice.",
          "No: one replay is one fixed batch; the engine does not split a step over graphs."),
         ("The graph for 32, with 12 padded rows that write no cache slot.",
          "Right: pad up to the smallest bucket that fits; the padding costs a little compute, no correctness."),
         ("An eager step: 20 has no graph.",
          "No: eager is only for batches larger than every bucket.")),
        1),
    "07-multiply": Question(
        "The source chapter says the optimizations compound: \"each one multiplies on top of the others ... "
        "together often 3–4× over a naive baseline\". In what sense do they compound?",
        (("They add up: the total is the sum of each switch's speed-up.",
          "No: a speed-up is a ratio of times. Each switch acts on the time the ones before it left, so "
          "the ratios chain by multiplying, not by adding."),
         ("Each acts on the time the ones before it left, so the ladder's total is the product of its "
          "rungs; but a rung's gain depends on what is already on, so it need not equal the switch's gain alone.",
          "Right: the total is the product of the rungs by construction. Whether it is also the product of "
          "each switch alone is what the chapter measures: where a switch gains more or less in the ladder "
          "than alone, the switches interact (the chapter prints both, and the product of the alone ratios)."),
         ("Each switch gains the same whatever else is on, so the product of the 'alone' ratios predicts the total.",
          "No: that is independence, and the chapter tests it rather than assuming it: compare each switch's "
          "ratio in the ladder with its ratio alone, and the ladder's total with the product of the alone ratios."),
         ("Because torch.compile fuses all the others into one kernel.",
          "No: compile works around flash-attn (an opaque op) and graphs are a launch mechanism, not a kernel.")),
        1),
    "07-where-first": Question(
        "On a GPU at batch 1, decode is far below the compute roofline. Which switch would you flip first?",
        (("attention='flash': attention dominates.",
          "Not at short contexts: with a 128-token prompt the weights, not the KV cache, are most of the "
          "bytes a decode step reads."),
         ("cuda_graphs: a batch-1 step is hundreds of tiny kernels, each paying a CPU launch.",
          "Right: at batch 1 the GPU waits for the CPU; launches are the first bottleneck, then bytes of weights."),
         ("compile: it finds everything.",
          "Compile removes redundant work and fuses, but it leaves the launch cost of what remains unless "
          "it also uses graphs ('reduce-overhead').")),
        1),
}


def _text(q: Question) -> str:
    lines = [q.prompt]
    for i, (answer, why) in enumerate(q.choices):
        lines.append(f"  {'ABCD'[i]}. {answer}")
    lines.append("(Run this notebook live to answer; every explanation: "
                 + " | ".join(f"{'ABCD'[i]}: {why}" for i, (_, why) in enumerate(q.choices)) + ")")
    return "\n".join(lines)


def ask(key: str):
    """Show question `key` as buttons (ipywidgets) or, without a widget front end, as text."""
    if key not in QUESTIONS:
        raise ValueError(f"unknown question {key!r}; choose one of {sorted(QUESTIONS)}")
    q = QUESTIONS[key]
    try:
        import ipywidgets as w
        from IPython import get_ipython
        from IPython.display import display
        live = get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except ImportError:
        live = False
    if not live:
        print(_text(q))
        return None
    out = w.Output()
    buttons = [w.Button(description="ABCD"[i], layout=w.Layout(width="3em")) for i in range(len(q.choices))]

    def on_click(button):
        i = buttons.index(button)
        answer, why = q.choices[i]
        out.clear_output()
        with out:
            print(("Correct. " if i == q.correct else "Not quite. ") + why)
    for b in buttons:
        b.on_click(on_click)
    rows = [w.HBox([b, w.Label(answer)]) for b, (answer, _) in zip(buttons, q.choices)]
    box = w.VBox([w.HTML(f"<b>{q.prompt}</b>"), *rows, out])
    display(box)
    return None   # displayed already: a returned widget would be shown twice as the cell's last value
