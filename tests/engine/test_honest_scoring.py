"""Evaluating model_best on the series it was selected on warns that the figure is optimistic."""

from __future__ import annotations

from perforation_d2.engine.trainer import warn_if_selected_on

CHOSEN = {"operating_point": {"method": "youden", "threshold": 0.3, "dataset": "synth_fold0_val"}}


def test_model_best_on_its_selection_data_warns(capsys):
    assert warn_if_selected_on(CHOSEN, "out/model_best.pth", ("synth_fold0_val",))
    err = capsys.readouterr().err
    assert err.startswith("warning: out/model_best.pth is the best-metric checkpoint chosen on synth_fold0_val")
    assert "optimistic" in err and "model_final.pth" in err


def test_other_cases_do_not_warn(capsys):
    assert not warn_if_selected_on(CHOSEN, "out/model_final.pth", ("synth_fold0_val",))
    assert not warn_if_selected_on(CHOSEN, "out/model_best.pth", ("synth_fold1_val",))  # other series
    assert not warn_if_selected_on({}, "out/model_best.pth", ("synth_fold0_val",))  # no record of the choice
    assert capsys.readouterr().err == ""
