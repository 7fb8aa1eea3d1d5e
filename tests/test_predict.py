"""how_far: the line a notebook prints after a "Predict" measurement."""
from workbench.ui.predict import how_far


def test_no_guess_says_so():
    assert "No guess entered" in how_far(None, 2.0, what="x")


def test_number_is_a_factor_off():
    assert "2x too high" in how_far(4, 2.0, what="x")
    assert "2x too low" in how_far(1, 2.0, what="x")
    assert "exact" in how_far(2, 2.0, what="x")
    assert "within 4 % too low" in how_far(2.4, 2.5, what="x")


def test_choice_and_list():
    assert "right" in how_far("Slower", "slower", what="x")
    assert "not this time" in how_far("faster", "slower", what="x")
    assert "right" in how_far(True, True, what="x") and "not this time" in how_far(False, True, what="x")
    assert "1 of 2 exact" in how_far([True, False], [True, True], what="x")


def test_set_names_what_was_missed_and_added():
    line = how_far({"prepare", "Sample"}, {"prepare", "schedule"}, what="x", why="because")
    assert "missed ['schedule'], extra ['sample']" in line and line.endswith("because")
    assert "exact" in how_far({"a"}, {"A"}, what="x")
