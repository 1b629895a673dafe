"""``synth --look-alikes hard``: look-alikes match perforations frame by frame; only time differs.

The statistics are read from the generator's own truth file (``synth_truth.json``): per event and
shown frame its box and peak density. At matched frames (one frame drawn per series, the same
frame for every blob of that series) the size and darkness of look-alikes and perforations are
compared with two-sample Kolmogorov-Smirnov tests, which must not reject at the 1% level; by
construction a single-frame model then has nothing to tell them apart with (expected AUC 0.5).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from perforation_d2.errors import DSAInputError
from perforation_d2.synth.cohort import generate_synthetic_cohort
from perforation_d2.synth.hard import FRAME_INTERVALS_MS, RADIUS_END, RADIUS_START

SIZE = 64
KS_LEVEL = 0.01


@pytest.fixture(scope="module")
def hard_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hard") / "cohort"
    generate_synthetic_cohort(out, 90, seed=3, size=SIZE, max_frames=10, look_alikes="hard", preview=False)
    return out


def _truth(folder: Path) -> list[dict]:
    return json.loads((folder / "synth_truth.json").read_text())["videos"]


def _at_matched_frames(videos: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Box side (sqrt of the area, px) and density of every blob at one random frame per series."""
    rng = np.random.default_rng(0)
    samples = {kind: {"side": [], "density": []} for kind in ("perforation", "flicker")}
    for video in videos:
        frame = int(rng.integers(len(video["times_s"])))
        for event in video["events"]:
            if frame in event["frames"]:
                i = event["frames"].index(frame)
                _, _, w, h = event["boxes"][i]
                samples[event["kind"]]["side"].append(math.sqrt(w * h))
                samples[event["kind"]]["density"].append(event["densities"][i])
    return samples


def test_look_alikes_match_perforations_at_matched_frames(hard_cohort):
    videos = _truth(hard_cohort)
    samples = _at_matched_frames(videos)
    assert len(samples["perforation"]["side"]) >= 30 and len(samples["flicker"]["side"]) >= 30
    for statistic in ("side", "density"):
        result = stats.ks_2samp(samples["perforation"][statistic], samples["flicker"][statistic])
        assert result.pvalue > KS_LEVEL, (statistic, result)
    # The test has power: perforations' first frames against their last frames differ clearly.
    first = [e["densities"][0] for v in videos for e in v["events"] if e["kind"] == "perforation" and len(e["frames"]) > 4]
    last = [e["densities"][-1] for v in videos for e in v["events"] if e["kind"] == "perforation" and len(e["frames"]) > 4]
    assert stats.ks_2samp(first, last).pvalue < KS_LEVEL


def test_same_number_of_blobs_in_positive_and_negative_series(hard_cohort):
    counts = {0: [], 1: []}
    for video in _truth(hard_cohort):
        counts[video["label"]].append(len(video["events"]))
        kinds = [e["kind"] for e in video["events"]]
        assert kinds.count("perforation") == video["label"]
        assert set(kinds) <= {"perforation", "flicker"}
    for label in (0, 1):
        assert set(counts[label]) <= {1, 2, 3} and len(counts[label]) >= 20
    # Mean counts agree within sampling error (both drawn from one distribution, sd ~0.77).
    assert abs(np.mean(counts[0]) - np.mean(counts[1])) < 3 * 0.77 * math.sqrt(1 / len(counts[0]) + 1 / len(counts[1]))


def test_perforations_grow_and_look_alikes_do_not(hard_cohort):
    videos = _truth(hard_cohort)
    jumping, first_densities = 0, []
    for video in videos:
        for event in video["events"]:
            d = np.diff(event["densities"])
            if event["kind"] == "perforation":
                # Boxed from the first frame it shows, to the last frame of the run, never fading.
                assert event["frames"] == list(range(event["frames"][0], len(video["times_s"])))
                assert (d >= -1e-4).all()
                first_densities.append(event["densities"][0])
            else:
                jumping += bool((d < -0.02).any())
    assert jumping >= 20  # look-alikes fade and return where perforations only grow
    assert np.median(first_densities) < 0.3  # perforations start faint (0.12-0.25 at onset)
    sides = [math.sqrt(b[2] * b[3]) for v in videos for e in v["events"] for b in e["boxes"]]
    assert min(sides) < 2.5 * 2 * RADIUS_START[1] * SIZE and max(sides) > 1.5 * RADIUS_END[0] * SIZE


def test_frame_rates_exposure_and_polarity_vary(hard_cohort):
    cohort = json.loads((hard_cohort / "cohort.json").read_text())
    intervals = {v["frame_time_ms"] for v in cohort["videos"] if v["frame_time_ms"] is not None}
    assert intervals <= {round(ms, 3) for ms in FRAME_INTERVALS_MS}
    assert min(intervals) == 250.0 and max(intervals) == 2000.0
    skews, levels = [], []
    for video in cohort["videos"]:
        files = [i["file_name"] for i in cohort["images"] if i["video_id"] == video["id"]]
        pixels = np.concatenate([np.asarray(Image.open(hard_cohort / f)).ravel() for f in files]).astype(float)
        # Contrast (vessels, blobs, the iris) is a dark tail on a light field, a bright tail inverted.
        skews.append(stats.skew(pixels))
        levels.append(float(np.median(pixels)))
    inverted = [s > 0 for s in skews]
    assert 0.1 * len(skews) < sum(inverted) < 0.45 * len(skews)
    assert np.std([m for m, inv in zip(levels, inverted) if not inv]) > 10  # exposure varies between runs


def test_unknown_look_alikes_are_refused(tmp_path):
    with pytest.raises(DSAInputError, match=r"--look-alikes\) must be one of standard, hard \(got 'easy'\)"):
        generate_synthetic_cohort(tmp_path / "c", 2, seed=0, size=64, look_alikes="easy")
    assert not (tmp_path / "c").exists()
