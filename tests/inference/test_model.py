"""The decision threshold of ``predict``: a manual one, else the operating point stored with the weights."""

from __future__ import annotations

import json

import pytest

from perforation_d2.engine.operating_point import OPERATING_POINT_FILE
from perforation_d2.errors import DSAInputError
from perforation_d2.inference.model import choose_threshold


def _point(method="youden", threshold=0.3, **extra):
    return {"method": method, "threshold": threshold, **extra}


def test_the_checkpoint_point_wins_over_the_side_file(tmp_path):
    weights = tmp_path / "model_final.pth"
    (tmp_path / OPERATING_POINT_FILE).write_text(json.dumps(_point(threshold=0.9)))
    chosen = choose_threshold(str(weights), {"operating_point": _point(series_optimization=False)}, "youden", None)
    assert (chosen.value, chosen.method, chosen.series_optimization) == (0.3, "youden", False)
    assert chosen.source.endswith("(checkpoint)")


@pytest.mark.parametrize("stored", [_point(method="spec95"), _point(threshold=float("nan")), _point(threshold=True),
                                    _point(threshold="0.3"), "youden"])
def test_an_unusable_checkpoint_point_falls_back_to_the_side_file(tmp_path, stored):
    weights = tmp_path / "model_final.pth"
    (tmp_path / OPERATING_POINT_FILE).write_text(json.dumps(_point(threshold=0.75)))
    chosen = choose_threshold(str(weights), {"operating_point": stored}, "youden", None)
    assert chosen.value == 0.75 and chosen.source == str(tmp_path / OPERATING_POINT_FILE)
    assert chosen.series_optimization is True  # the default when the file does not say


def test_manual_threshold_and_clear_errors(tmp_path):
    weights = str(tmp_path / "model_final.pth")
    manual = choose_threshold(weights, {}, "youden", 0.5, series_optimization=False)
    assert (manual.value, manual.method, manual.series_optimization) == (0.5, "manual", False)
    with pytest.raises(DSAInputError, match="no spec95 operating point is stored"):
        choose_threshold(weights, {"operating_point": _point()}, "spec95", None)
    with pytest.raises(DSAInputError, match="valid choices are youden, spec95"):
        choose_threshold(weights, {}, "f1", None)
    (tmp_path / OPERATING_POINT_FILE).write_text("[" * 100_000)
    with pytest.raises(DSAInputError, match="operating point file"):
        choose_threshold(weights, {}, "youden", None)
