"""Command line: python -m workbench {demo, doctor, bench, measure}."""
from __future__ import annotations

import argparse
import os
import sys
import time


def cmd_demo(args) -> int:
    from workbench import LLM, Optimizations, SamplingParams
    from workbench.assets import DEFAULT_MODEL_DIR, make_sort_prompts

    import torch
    model = args.model or DEFAULT_MODEL_DIR
    preset = args.preset or ("all_on" if torch.cuda.is_available() else "default")
    opts = Optimizations.preset(preset)
    with LLM(model, opts=opts) as llm:
        print(llm.describe(), end="\n\n")
        if args.model:   # the user's own checkpoint: their prompts, no answer key
            cases = [(p, None) for p in (args.prompt or ["Hello, my name is"])]
        else:
            cases = make_sort_prompts(args.num_prompts, seed=args.seed)
        params = SamplingParams(temperature=0, max_tokens=args.max_tokens)
        start = time.perf_counter()
        outs = llm.generate([prompt for prompt, _ in cases], params, use_tqdm=False)
        seconds = time.perf_counter() - start
        right = 0
        for (prompt, expected), out in zip(cases, outs):
            answer = out.text.strip()
            mark = "" if expected is None else ("  ok" if answer == expected else f"  WRONG (want {expected})")
            right += expected is not None and answer == expected
            print(f"{prompt!s:<30} {answer}{mark}")
        tokens = sum(len(o.token_ids) for o in outs)
        print(f"\n{len(outs)} requests, {tokens} tokens in {seconds:.2f} s = {tokens / seconds:,.0f} tok/s "
              f"(measured, {llm.device}, includes prefill)")
        if not args.model:
            print(f"correct: {right}/{len(outs)}")
    return 0


def cmd_doctor(args) -> int:
    import torch

    from workbench.attention.flash import flash_status
    from workbench.measure import ncu_status
    from workbench.optimizations.board import SWITCHES, why_not

    print(f"python      {sys.version.split()[0]}")
    print(f"torch       {torch.__version__}")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        print(f"cuda        {torch.version.cuda}, {torch.cuda.device_count()} GPU(s): {props.name}, "
              f"sm_{props.major}{props.minor}, {props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs")
    else:
        print("cuda        not available: flash, fused kernels and CUDA graphs will be reported as unavailable")
    try:
        import triton
        print(f"triton      {triton.__version__}")
    except ImportError as err:
        print(f"triton      not importable ({err}); fused kernels need it: pip install triton")
    name, reason = flash_status()
    print(f"flash-attn  {name or 'unavailable'}: {reason}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    blocked = why_not(device)   # the board's one decision, as LLM makes it
    for switch in SWITCHES:
        print(f"{switch:<11} {'unavailable: ' + blocked[switch] if switch in blocked else 'can run'} (on {device})")
    path, reason = ncu_status()
    print(f"ncu         {path or 'unavailable'}: {reason}")
    for module in ("ipywidgets", "matplotlib", "nbclient"):
        try:
            __import__(module)
            print(f"{module:<11} ok")
        except ImportError:
            print(f"{module:<11} missing: pip install -e '.[notebook]'")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate with the embedded sorting model (or --model yours)")
    demo.add_argument("--model", help="a Hugging Face checkpoint directory (default: the embedded sorter)")
    demo.add_argument("--prompt", action="append", help="prompt text (with --model); repeatable")
    demo.add_argument("--preset", help="all_on | all_off | default | enforce_eager "
                      "(default: all_on on a GPU, default (sdpa, eager) on a CPU)")
    demo.add_argument("--num-prompts", type=int, default=8)
    demo.add_argument("--max-tokens", type=int, default=16)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=cmd_demo)

    doctor = sub.add_parser("doctor", help="what this machine can run: CUDA, flash-attn, Triton, ncu")
    doctor.set_defaults(func=cmd_doctor)

    from workbench.measure.cli import add_measure_commands
    add_measure_commands(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (OSError, ValueError, RuntimeError) as err:
        # Bad input (a missing checkpoint, an unknown setting, a switch this machine cannot run):
        # the message says what to do; a traceback would bury it. WORKBENCH_TRACEBACK=1 shows it.
        if os.environ.get("WORKBENCH_TRACEBACK"):
            raise
        print(f"error: {err}\n(WORKBENCH_TRACEBACK=1 shows where it came from)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
