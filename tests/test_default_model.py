"""The embedded sorter answers its task through the engine, and the demo prints it."""
from workbench import LLM, SamplingParams
from workbench.__main__ import main
from workbench.assets import DEFAULT_MODEL_DIR, make_sort_prompts


def test_embedded_model_sorts_held_out_prompts():
    cases = make_sort_prompts(200, seed=424242)
    with LLM(DEFAULT_MODEL_DIR) as llm:
        outs = llm.generate([p for p, _ in cases], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
    right = sum(out.text.strip() == want and out.finish_reason == "stop" for (_, want), out in zip(cases, outs))
    assert right / len(cases) >= 0.95, f"{right}/{len(cases)} correct"


def test_demo_prints_checked_answers(capsys):
    assert main(["demo", "--num-prompts", "4"]) == 0
    out = capsys.readouterr().out
    assert "correct: 4/4" in out and "tok/s (measured" in out and "attention  sdpa" in out
