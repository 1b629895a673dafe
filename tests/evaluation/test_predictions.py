"""The one series-decision pipeline: the strict predictions schema, top-1, SO and series scores.

Expected values are worked out by hand here, not with the package's own metrics.
"""

from __future__ import annotations

import json

import pytest
from helpers.metric_cases import GT, make_cohort, pred

from perforation_d2.cli import main
from perforation_d2.errors import DSAInputError
from perforation_d2.evaluation.cohort_index import CohortIndex, FrameLayout
from perforation_d2.evaluation.predictions import (
    FrameDetections,
    decide_series,
    parse_predictions,
    surviving_detections,
)
from perforation_d2.evaluation.series_optimization import Detection


def _every_entry(change):
    """Two series of two frames, every prediction changed by ``change`` (so no fast path can accept it)."""
    cohort = make_cohort([[[GT], [GT]], [[], []]])
    predictions = [{**pred(v, f, GT, 0.5), **change} for v in (0, 1) for f in (0, 1)]
    return cohort, predictions


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bbox": [40, 40, 20, 20, 40, 40, 20, 20]}, "is not four numbers"),  # 8 numbers: never reshaped
        ({"bbox": [[40, 40], [20, 20]]}, "is not four numbers"),  # nested
        ({"bbox": [[40], [40], [20], [20]]}, "is not four numbers"),  # nested, four rows
        ({"bbox": [40, 40]}, "is not four numbers"),  # 2 numbers (was an IndexError)
        ({"bbox": [True, 40, 20, 20]}, "is not four numbers"),
        ({"bbox": [40, 40, 10**400, 20]}, "not finite"),  # JSON integers have no size limit
        ({"bbox": "40 40 20 20"}, "is not four numbers"),
        ({"score": 10**400}, "not a probability"),
        ({"score": True}, "not a number"),
        ({"image_id": 1000.0}, "not an integer"),
        ({"category_id": True}, "category_id True"),
        ({"category_id": "1"}, "category_id '1'"),
    ],
)
def test_malformed_predictions_are_one_clean_error(change, message):
    cohort, predictions = _every_entry(change)
    with pytest.raises(DSAInputError, match=message) as error:
        parse_predictions(predictions, CohortIndex(cohort), source="run.json")
    text = str(error.value)
    assert text.startswith("run.json: 4 bad predictions: entry 0: ") and "\n" not in text
    assert len(text) < 2000  # long values are shortened


def test_a_deeply_nested_bbox_is_shortened_not_repeated():
    cohort, predictions = _every_entry({})
    nested = GT
    for _ in range(200):
        nested = [nested]
    predictions[0]["bbox"] = nested
    with pytest.raises(DSAInputError, match="entry 0: bbox .*\\.\\.\\. is not four numbers"):
        parse_predictions(predictions, CohortIndex(cohort))


def test_top1_so_and_series_score_by_hand():
    # Series 0 (4 frames): frames 0-1 linked (scores 0.2, 0.6: weight 0.8 * 2 = 1.6), frame 3 alone
    # elsewhere (0.9: weight 0.9), so the trajectory 0-1 survives with mean score 0.4. Frame 1 has a
    # second, lower box that top-1 drops. Series 1 has no prediction: score 0.
    cohort = make_cohort([[[GT]] * 4, [[]] * 2])
    far = (0, 0, 10, 10)
    predictions = [pred(0, 0, GT, 0.2), pred(0, 1, far, 0.5), pred(0, 1, GT, 0.6), pred(0, 3, far, 0.9)]
    index = CohortIndex(cohort)
    decided = decide_series(parse_predictions(predictions, index), index)
    assert decided.scores.tolist() == pytest.approx([0.4, 0.0])
    assert decided.detections.frame.tolist() == [0, 1]
    assert decided.detections.boxes.tolist() == [list(GT), list(GT)]
    without = decide_series(parse_predictions(predictions, index), index, series_optimization=False)
    assert without.scores.tolist() == pytest.approx([0.9, 0.0])

    survivors = surviving_detections(cohort, predictions)
    assert list(survivors) == [10, 11]
    assert [d is not None for d in survivors[10]] == [True, True, False, False]
    assert survivors[10][0].score == pytest.approx(0.4) and survivors[11] == [None, None]


def test_frames_are_ordered_by_frame_id_not_by_list_order():
    cohort = make_cohort([[[GT]] * 3])
    cohort["images"].reverse()  # the images list out of frame order
    # Frames 0 and 2 hold a box; frame 1 none: two trajectories of one frame each, 0.3 and 0.7.
    predictions = [pred(0, 2, GT, 0.7), pred(0, 0, GT, 0.3)]
    index = CohortIndex(cohort)
    decided = decide_series(parse_predictions(predictions, index), index)
    assert decided.detections.frame.tolist() == [2] and decided.scores.tolist() == [0.7]


def test_one_series_without_a_cohort():
    per_frame = [Detection(GT, 0.5), Detection(GT, 0.7), None]
    layout = FrameLayout([3])
    decided = decide_series(FrameDetections.from_frames(per_frame), layout)
    assert decided.scores.tolist() == pytest.approx([0.6])
    assert [d and round(d.score, 6) for d in decided.detections.by_series(layout)[0]] == [0.6, 0.6, None]


def test_evaluate_refuses_eight_number_boxes_with_a_paragraph(tmp_path, capsys):
    cohort, predictions = _every_entry({"bbox": [40, 40, 20, 20, 40, 40, 20, 20]})
    (tmp_path / "cohort.json").write_text(json.dumps(cohort))
    (tmp_path / "pred.json").write_text(json.dumps(predictions))
    code = main(["evaluate", "--gt", str(tmp_path / "cohort.json"), "--pred", str(tmp_path / "pred.json"),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"error: {tmp_path / 'pred.json'}: 4 bad predictions")
    assert "Traceback" not in err and not (tmp_path / "out").exists()
