"""vlaedge.check.plots on edge values that real runs produce (the report must render whatever the run)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from vlaedge.check.plots import success_plot


def test_success_plot_draws_all_and_none_succeeded_even_with_a_rounded_interval():
    """`wilson_interval(100, 100)` gives an upper bound of 0.9999999999999999, below the rate 1.0: the
    error bar must not go negative (matplotlib refuses a negative xerr, which made `vlaedge compress` of the
    default policy exit 2 while writing report.html when the candidate succeeded 100/100)."""
    everything = {"successes": 100, "episodes": 100, "rate": 1.0, "interval": [0.963, 0.9999999999999999]}
    nothing = {"successes": 0, "episodes": 100, "rate": 0.0, "interval": [0.0, 0.037]}
    svg = success_plot(everything, nothing)
    ET.fromstring(svg)  # well-formed
    assert "<!-- 100/100 -->" in svg and "<!-- 0/100 -->" in svg
