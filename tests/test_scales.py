"""The display quantisation of tui/widgets/scales.py: round scale ends, colour steps, printed
digits, and the margins each choice reports (test_tui_snapshots.py relies on them)."""

from __future__ import annotations

import pytest
from horizon.tui.format import fixed, fmt, sparkline
from horizon.tui.widgets.charts import legend_text
from horizon.tui.widgets.scales import Scale, nice_step, recording_margins, unrecorded


def test_nice_step_is_one_two_or_five_times_a_power_of_ten() -> None:
    assert nice_step(0.043) == 0.005
    assert nice_step(1.0) == 0.1
    assert nice_step(17.0) == 2.0
    assert nice_step(30.0) == 5.0


def test_fitted_scale_has_round_ends_and_few_steps() -> None:
    # tiny-llama's nearly uniform heads (issue 11): 5.229-5.272 stretched over the scale.
    scale = Scale.fit([5.229, 5.25, 5.272, None, float("nan")])
    assert (scale.low, scale.high, scale.steps) == (pytest.approx(5.225), pytest.approx(5.275), 10)
    assert scale.step_of(5.229) == 0 and scale.step_of(5.272) == 9
    diverging = Scale.fit([-0.3, 0.12], diverging=True)
    assert diverging.low == -diverging.high and diverging.diverging and diverging.steps % 2 == 0
    assert Scale.fit([]).steps >= 1 and Scale.fit([2.0, 2.0]).high > Scale.fit([2.0, 2.0]).low


def test_a_colour_is_the_colour_of_its_step() -> None:
    scale = Scale(0.0, 1.0, steps=10)
    assert scale.rgb(0.31) == scale.rgb(0.39) == scale.step_rgb(3)
    assert scale.rgb(0.29) != scale.rgb(0.31)
    assert scale.rgb(-5.0) == scale.step_rgb(0) and scale.rgb(5.0) == scale.step_rgb(9)  # clipped


def test_fmt_prints_three_significant_figures_or_three_decimals() -> None:
    assert fmt(49.437) == "49.4" and fmt(5.2291) == "5.23" and fmt(142.1) == "142"
    assert fmt(0.01234) == "0.012" and fmt(-0.4) == "-0.400"
    assert fmt(12345.0) == "1.23e+04" and fmt(0.0004) == "4.00e-04"
    assert fmt(None) == "n/a" and fmt(float("inf")) == "n/a"
    assert fixed(-0.0712, 3, sign=True) == "-0.071" and fixed(0.0712, 2, sign=True) == "+0.07"


def test_every_choice_reports_its_margin() -> None:
    with recording_margins() as margins:
        fmt(5.2291)  # 5.2291 prints as 5.23; the boundary is 5.225
        Scale(0.0, 1.0, steps=10).step_of(0.3000001)  # just above the 0.3 step edge
        Scale(0.0, 1.0, steps=10).step_of(1.0)  # the scale's end is no boundary
        sparkline([0.0, 0.5, 1.0])
    digits = [m for m in margins if m.kind == "digit"]
    assert min(m.distance for m in digits) == pytest.approx(0.0041, abs=1e-9)
    colours = [m for m in margins if m.kind == "colour step"]
    assert len(colours) == 1 and colours[0].distance == pytest.approx(1e-7, rel=1e-3)
    assert {m.kind for m in margins} == {"digit", "colour step", "bar height"}
    with recording_margins() as margins, unrecorded():
        fmt(1.0)
        legend_text(Scale.fit([0.1, 0.9]), "x")
    assert margins == []
    fmt(1.0)  # without a recorder nothing is kept
