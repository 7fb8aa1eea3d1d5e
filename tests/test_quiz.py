"""Quiz questions: each choice explains itself, the right answer is one of them, and the source
chapter's three questions sit in the chapters they belong to."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from workbench.ui.quiz import QUESTIONS, ask

REPO = Path(__file__).resolve().parents[1]
PLACES = {"03_flash_attention": ["03-why-faster", "03-tiles"], "05_cuda_graphs": ["05-decode-not-prefill", "05-buckets"],
          "07_stack_them_all": ["07-multiply", "07-where-first"]}


@pytest.mark.parametrize("key", sorted(QUESTIONS))
def test_question_is_well_formed(key):
    q = QUESTIONS[key]
    assert 0 <= q.correct < len(q.choices) and len(q.choices) >= 3
    for i, (answer, why) in enumerate(q.choices):
        assert answer and len(why) > 20
        assert why.startswith("Right") == (i == q.correct), f"{key}: choice {i} explanation vs correct index"


@pytest.mark.parametrize("chapter", sorted(PLACES))
def test_questions_are_placed_in_their_chapter(chapter):
    cells = json.loads((REPO / "notebooks" / f"{chapter}.ipynb").read_text())["cells"]
    code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    for key in PLACES[chapter]:
        assert f'ask("{key}")' in code


def test_text_fallback_prints_every_explanation(capsys):
    ask("05-decode-not-prefill")
    out = capsys.readouterr().out
    assert all(why in out for _, why in QUESTIONS["05-decode-not-prefill"].choices)
    with pytest.raises(ValueError, match="choose one of"):
        ask("nope")


def test_a_live_question_is_displayed_once(monkeypatch):
    """In a notebook `ask` displays its widget; returning it too showed the cell's last question twice."""
    import IPython
    import IPython.display

    class Kernel:
        config = {"IPKernelApp": {}}
    shown = []
    monkeypatch.setattr(IPython, "get_ipython", lambda: Kernel())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    assert ask("05-buckets") is None
    assert len(shown) == 1


def test_07_multiply_asks_in_what_sense_not_why():
    """Chapter 07 prints that its switches interact (each one's ratio in the ladder vs alone); the
    question asked "Why do the optimizations multiply ... rather than add up?", taking as given the
    independence the chapter measures."""
    q = QUESTIONS["07-multiply"]
    assert "in what sense" in q.prompt.lower() and not q.prompt.lower().startswith("why")
    answer, why = q.choices[q.correct]
    assert "alone" in answer and "interact" in why
