"""Score against answer length (μKE Figure 5): the series the figure draws."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kedit.runs.length_plots import length_series, plot_score_by_length


def test_bins_group_lengths_and_report_their_start():
    rows = length_series([(75, 0.5), (79, 1.0), (80, 0.25), (131, 0.0)], bin_width=20)
    assert [(r["length"], r["n"], r["mean"]) for r in rows] == [(60, 2, 0.75), (80, 1, 0.25), (120, 1, 0.0)]
    assert rows[1]["ci95"] == [0.25, 0.25]  # one request: no spread


def test_exact_lengths_without_bins():
    rows = length_series([(64, 1.0), (32, 0.5), (64, 0.0)])
    assert [(r["length"], r["n"], r["mean"]) for r in rows] == [(32, 1, 0.5), (64, 2, 0.5)]
    with pytest.raises(ValueError, match="bin_width"):
        length_series([(1, 1.0)], bin_width=0)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 300), st.floats(0, 1)), min_size=1, max_size=30))
def test_series_cover_every_point_once_and_intervals_bracket_the_means(points):
    rows = length_series(points, bin_width=50, resamples=200)
    assert sum(r["n"] for r in rows) == len(points)
    assert math.isclose(sum(r["mean"] * r["n"] for r in rows), sum(s for _, s in points), abs_tol=1e-9)
    for r in rows:
        low, high = r["ci95"]
        assert low - 1e-12 <= r["mean"] <= high + 1e-12


def test_plot_draws_methods_with_points_only(tmp_path):
    assert plot_score_by_length({"muke": []}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    series = {"anyedit": length_series([(32, 0.9), (64, 0.5)]), "muke": length_series([(32, 1.0), (64, 0.9)])}
    assert plot_score_by_length(series, tmp_path / "f5.png").stat().st_size > 1000


@pytest.mark.parametrize("log2_x", [False, True])
def test_nudged_points_stay_nearer_their_own_length(log2_x):
    """Methods are nudged apart at each length, never as far as the next length (on a log axis, by
    the same factor at every length, so doubling cuts stay equally spaced)."""
    from kedit.runs.length_plots import _placement

    xs = [32, 64, 128, 256]
    place, (low, high) = _placement(xs, log2_x)
    assert place(64, 0) == 64 and low < 32 and high > 256
    for k in (-1.5, -0.5, 0.5, 1.5):  # four methods
        for a, b in zip(xs, xs[1:]):
            assert abs(place(a, k) - a) < abs(place(a, k) - b)
    if log2_x:
        assert math.isclose(place(32, 1.5) / 32, place(256, 1.5) / 256)
