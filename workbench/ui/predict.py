"""Predict, then measure: the student writes a guess before a measurement; afterwards the notebook
says how far it was.

    GUESS = None          # the answer cell, filled before running the measurement
    ...measurement...
    how_far(GUESS, measured, what="naive / flash bytes at N = 4096")

A number guess is compared as a ratio (a factor off, in either direction); a choice guess as
right or wrong, without case or surrounding spaces, and matching a measured name without its
trailing note ("sdpa" is "sdpa (CPU's fused attention)"); a list element by element, each name
matched as a choice is; a set (e.g. of phase names) by what it got, missed and added. The
measured value always comes from the cell above, never from this module.

how_far prints its line and returns None: a notebook cell often ends with the call, and a returned
string would be shown a second time, as the cell's value.

label names where the answer comes from: "measured" (the default), or "modelled" where it is
arithmetic from a model (chapter 03's bytes ratio), so the line never calls a model a measurement.
"""
from __future__ import annotations


def how_far(guess, measured, *, what: str, why: str = "", label: str = "measured") -> None:
    """Print how far `guess` was from `measured` (the line is `verdict`'s)."""
    print(verdict(guess, measured, what=what, why=why, label=label))


def verdict(guess, measured, *, what: str, why: str = "", label: str = "measured") -> str:
    """The line how_far prints; `label` is the word before the answer ("measured", "modelled")."""
    if guess is None or guess is ...:
        line = f"{what}: {label} {_fmt(measured)}. (No guess entered: fill the answer cell first next time.)"
    elif isinstance(measured, (str, bool)) or isinstance(guess, (str, bool)):   # a choice
        hit = _same_choice(guess, measured)
        says = {"measured": "the run", "modelled": "the model"}.get(label, label)
        line = f"{what}: you said {guess!r}, {says} says {measured!r}: {'right' if hit else 'not this time'}."
    elif isinstance(guess, (set, frozenset)):
        got, want = {str(g).strip().lower() for g in guess}, {str(m).strip().lower() for m in measured}
        line = (f"{what}: you said {sorted(got)}, {label} {sorted(want)}: "
                + ("exact." if got == want else f"missed {sorted(want - got)}, extra {sorted(got - want)}."))
    elif isinstance(guess, (list, tuple)):
        off = [_same_choice(g, m) if isinstance(g, str) or isinstance(m, str) else g == m
               for g, m in zip(guess, measured)]
        line = f"{what}: you said {list(guess)}, {label} {list(measured)}: {sum(off)} of {len(off)} exact."
    else:
        g, m = float(guess), float(measured)
        if g == m:
            line = f"{what}: you said {_fmt(g)}, {label} {_fmt(m)}: exact."
        elif g > 0 and m > 0:
            factor = max(g, m) / min(g, m)
            off = (f"within {100 * (factor - 1):.0f} %" if factor < 1.1 else f"{factor:.2g}x")   # "1x too low" reads wrong
            line = f"{what}: you said {_fmt(g)}, {label} {_fmt(m)}: {off} too {'high' if g > m else 'low'}."
        else:
            line = f"{what}: you said {_fmt(g)}, {label} {_fmt(m)} (off by {_fmt(abs(g - m))})."
    if why:
        line += f" {why}"
    return line


def _same_choice(guess, measured) -> bool:
    """A named choice: equal without case or surrounding spaces, or equal to the measured name
    without its trailing note in parentheses ("+pdl" is "+pdl (all on)")."""
    g, m = str(guess).strip().lower(), str(measured).strip().lower()
    return g == m or (m.endswith(")") and " (" in m and g == m.split(" (")[0].strip())


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x)
