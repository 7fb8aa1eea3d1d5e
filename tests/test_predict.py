"""how_far: the line a notebook prints after a "Predict" measurement."""
from workbench.ui.predict import how_far, verdict


def test_no_guess_says_so():
    assert "No guess entered" in verdict(None, 2.0, what="x")


def test_number_is_a_factor_off():
    assert "2x too high" in verdict(4, 2.0, what="x")
    assert "2x too low" in verdict(1, 2.0, what="x")
    assert "exact" in verdict(2, 2.0, what="x")
    assert "within 4 % too low" in verdict(2.4, 2.5, what="x")


def test_choice_and_list():
    assert "right" in verdict("Slower", "slower", what="x")
    assert "not this time" in verdict("faster", "slower", what="x")
    assert "right" in verdict(True, True, what="x") and "not this time" in verdict(False, True, what="x")
    assert "1 of 2 exact" in verdict([True, False], [True, True], what="x")


def test_set_names_what_was_missed_and_added():
    line = verdict({"prepare", "Sample"}, {"prepare", "schedule"}, what="x", why="because")
    assert "missed ['schedule'], extra ['sample']" in line and line.endswith("because")
    assert "exact" in verdict({"a"}, {"A"}, what="x")


def test_how_far_prints_its_line_once(capsys):
    """A cell that ends with how_far(...) showed the line twice: printed, then as the cell's value."""
    assert how_far(4, 2.0, what="x", why="because") is None
    assert capsys.readouterr().out == verdict(4, 2.0, what="x", why="because") + "\n"


def test_every_predict_prompt_has_an_answer_cell_and_a_how_far_line():
    """A "Predict" prompt is followed by its answer cell (GUESS_... = None) before any other code,
    and a later cell passes that guess to how_far. (Chapter 09 answers its three prompts in its
    own cells, not yet through how_far: it is left out until it does.)"""
    import re
    from pathlib import Path

    import nbformat
    prompts = 0
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("0[0-8]_*.ipynb")):
        cells = nbformat.read(path, as_version=4).cells
        for i, cell in enumerate(cells):
            if cell.cell_type != "markdown" or "**Predict" not in cell.source:
                continue
            prompts += 1
            answer = next((c for c in cells[i + 1:] if c.cell_type == "code"), None)
            names = re.findall(r"^(GUESS_\w+)\s*=\s*None", answer.source if answer else "", re.M)
            assert names, f"{path.name}: the Predict prompt in cell {cell.get('id', i)} has no answer cell after it"
            for name in names:
                assert any(re.search(rf"how_far\(\s*{name}\b", c.source) for c in cells[i + 1:] if c.cell_type == "code"), \
                    f"{path.name}: {name} is never compared with a measurement (how_far)"
    assert prompts >= 20, prompts


def test_a_choice_matches_the_name_before_its_parenthesis():
    """Chapter 07's ladder prints "sdpa (CPU's fused attention)": a student who guessed "sdpa" was
    told "not this time"."""
    assert "right" in verdict("sdpa", "sdpa (CPU's fused attention)", what="x")
    assert "right" in verdict(" +PDL ", "+pdl (all on)", what="x")
    assert "right" in verdict("sdpa (CPU's fused attention)", "sdpa (CPU's fused attention)", what="x")
    assert "not this time" in verdict("sdp", "sdpa (CPU's fused attention)", what="x")
    assert "not this time" in verdict("CPU's fused attention", "sdpa (CPU's fused attention)", what="x")


def test_list_elements_are_compared_as_choices_are():
    """Chapter 07's GEMV guess is a tuple of names: "O_proj" or "lm_head " scored 0 of 2, while
    the same names as a single choice were matched without case or spaces."""
    assert "2 of 2 exact" in verdict(("O_proj", "lm_head "), ["o_proj", "lm_head"], what="x")
    assert "1 of 2 exact" in verdict(("o_proj", "qkv_proj"), ["o_proj", "lm_head"], what="x")
    assert "2 of 2 exact" in verdict([1, True], [1, True], what="x")


def test_a_modelled_answer_is_not_called_measured():
    """Chapter 03 graded a guess against the bytes model's ratio and printed "measured 66.7": the
    answer was arithmetic, not a measurement. label= names where the answer comes from."""
    line = verdict(60, 66.7, what="naive / flash bytes", label="modelled")
    assert "modelled 66.7" in line and "measured" not in line
    assert "modelled 66.7" in verdict(None, 66.7, what="x", label="modelled")
    assert "modelled [1, 2]" in verdict([1, 3], [1, 2], what="x", label="modelled")
    assert "the model says 'above'" in verdict("below", "above", what="x", label="modelled")
    assert "measured 2" in verdict(4, 2.0, what="x") and "the run says" in verdict("a", "b", what="x")
