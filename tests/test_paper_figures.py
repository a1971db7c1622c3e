"""Reading the paper's figures: axis calibration, interpolation, and the committed values."""
import json
import math

import pytest

from conftest import REPO, load_benchmark

paper_figures = load_benchmark("paper_figures")


def test_an_axis_is_calibrated_from_its_labelled_ticks():
    # A y-axis drawn downwards (page y grows down): -150 at y = 144, -100 at y = 96.8, every 10 nats
    # a tick 9.44 apart; labels sit 0.3 above their ticks, as text baselines do.
    ticks = [144.0 - 9.44 * k for k in range(6)]
    axis = paper_figures.calibrate(ticks, [(t - 0.3, -150.0 + 10 * k) for k, t in enumerate(ticks)], log=False)
    assert axis.value(144.0) == pytest.approx(-150.0)
    assert axis.value(144.0 - 9.44 * 2.5) == pytest.approx(-125.0)
    # A log x-axis with minor ticks between the labelled decades: only the labelled ones count.
    decades = [131.65 + 16.92 * k for k in range(4)]
    log_axis = paper_figures.calibrate(decades, [(d - 0.6, 10.0 ** (5 + k)) for k, d in enumerate(decades)], log=True)
    assert log_axis.value(131.65 + 16.92 * 1.5) == pytest.approx(10**6.5)
    assert log_axis.coordinate(10**7) == pytest.approx(131.65 + 16.92 * 2)


def test_an_unevenly_labelled_axis_is_refused():
    ticks = [0.0, 10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="not evenly spaced"):
        paper_figures.calibrate(ticks, [(0.0, 0.0), (10.0, 10.0), (20.0, 20.0), (30.0, 40.0)], log=False)
    with pytest.raises(ValueError, match="two labelled ticks"):
        paper_figures.calibrate(ticks, [(0.0, 0.0)], log=False)


def test_a_curve_is_read_between_its_vertices_in_the_axis_scale():
    line = [(1e5, 0.0), (1e7, 20.0)]  # straight on a log-x plot: 10 per decade
    assert paper_figures.value_at(line, 1e6, log=True) == pytest.approx(10.0)
    assert paper_figures.value_at(line, 1e6, log=False) == pytest.approx(20.0 * (1e6 - 1e5) / (1e7 - 1e5))
    assert paper_figures.value_at(line, 1e8, log=True) is None
    curve = {"points": line, "log_x": True, "x_range": (1e5, 1e7), "y_range": (5.0, 30.0)}
    assert paper_figures._read(curve, 1e7) == pytest.approx(20.0)  # the panel's edge is inside it
    assert paper_figures._read(curve, 2e5) is None  # the curve is below the panel there


def test_the_committed_values_hold_every_panel_of_both_figures():
    figures = json.loads((REPO / "benchmarks" / "results" / "paper_figures.json").read_text())
    panels2 = {(s["dataset"], s["latent_dim"], s["method"], s["split"]) for s in figures["figure2"]}
    expected = {(d, nz, m, split) for d, nzs in (("mnist", (3, 5, 10, 20, 200)), ("frey-face", (2, 5, 10, 20)))
                for nz in nzs for m in ("aevb", "wake-sleep") for split in ("train", "test")}
    assert panels2 == expected
    panels3 = {(s["train_size"], s["method"], s["split"]) for s in figures["figure3"]}
    assert panels3 == {(n, m, split) for n in (1000, 50_000) for m in ("aevb", "wake-sleep", "mcem")
                       for split in ("train", "test")}
    for series in figures["figure2"]:
        values = [v for _, v in series["curve"]]
        assert all(math.isfinite(v) for v in values) and len(values) >= 10
