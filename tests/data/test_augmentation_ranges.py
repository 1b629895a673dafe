"""The training augmentation draws what SPEC section 2 says, measured on the transforms it makes.

Each of horizontal flip, shift (|ratio| in (0, 0.0625] of the frame size, per axis), scale
(factor 1 + [-0.1, 0.1]) and rotation ([-10, 10] degrees) is applied with probability 0.5,
independently, and ONE transform is drawn per clip. The flip, scale, angle and shift of every
drawn matrix are read back from the matrix itself (its determinant, rotation angle and where it
moves the frame centre), so a rotation in radians or a shift not scaled by the frame size fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers.cohorts import make_cfg

from perforation_d2.data.clip_transforms import DSAClipAugmentation

FRAME_SIZE = 64
SOURCE = (96, 128)  # (H, W): not the frame size, so the shift must be in output pixels
SAMPLES = 4000
# 4.5 binomial standard deviations of a p=0.5 (or 0.25) frequency over SAMPLES draws.
TOLERANCE = 4.5 * math.sqrt(0.25 / SAMPLES)


def _decompose(matrix: np.ndarray) -> tuple[bool, float, float, np.ndarray]:
    """(flipped, scale, angle in degrees, shift as a fraction of the frame size) of one transform."""
    resize = np.diag([FRAME_SIZE / SOURCE[1], FRAME_SIZE / SOURCE[0], 1.0])
    m = matrix @ np.linalg.inv(resize)  # the augmentation alone, in output pixels
    linear = m[:2, :2]
    flipped = np.linalg.det(linear) < 0
    if flipped:
        linear = linear @ np.diag([-1.0, 1.0])
    scale = math.sqrt(abs(np.linalg.det(linear)))
    angle = math.degrees(math.atan2(linear[0, 1], linear[0, 0]))
    centre = np.array([FRAME_SIZE / 2, FRAME_SIZE / 2, 1.0])
    # Flip, scale and rotation keep the frame centre in place: what moves it is the shift.
    shift = (m @ centre)[:2] - centre[:2]
    return bool(flipped), scale, angle, shift / FRAME_SIZE


@pytest.fixture(scope="module")
def drawn():
    augmentation = DSAClipAugmentation.from_config(make_cfg(frame_size=FRAME_SIZE))
    image = np.zeros(SOURCE, dtype=np.uint8)
    np.random.seed(0)  # noqa: NPY002  (the augmentation draws from np.random, as Detectron2 does)
    parts = [_decompose(augmentation.get_transform(image).matrix) for _ in range(SAMPLES)]
    flips = np.array([p[0] for p in parts])
    scales = np.array([p[1] for p in parts])
    angles = np.array([p[2] for p in parts])
    shifts = np.array([p[3] for p in parts])
    return flips, scales, angles, shifts


def test_each_augmentation_is_applied_half_of_the_time_independently(drawn):
    flips, scales, angles, shifts = drawn
    applied = {
        "flip": flips,
        "scale": np.abs(scales - 1.0) > 1e-12,
        "rotation": np.abs(angles) > 1e-9,
        "shift": np.abs(shifts).max(axis=1) > 1e-12,
    }
    for name, mask in applied.items():
        assert abs(mask.mean() - 0.5) < TOLERANCE, (name, mask.mean())
    names = list(applied)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = (applied[a] & applied[b]).mean()
            assert abs(both - 0.25) < TOLERANCE, (a, b, both)


def test_scale_factor_covers_plus_minus_ten_percent(drawn):
    scales = drawn[1]
    scaled = scales[np.abs(scales - 1.0) > 1e-12]
    assert scaled.min() >= 0.9 - 1e-9 and scaled.max() <= 1.1 + 1e-9
    assert scaled.min() < 0.905 and scaled.max() > 1.095  # uniform over the whole range
    assert abs(np.mean(scaled) - 1.0) < 0.01


def test_rotation_covers_plus_minus_ten_degrees(drawn):
    angles = drawn[2]
    rotated = angles[np.abs(angles) > 1e-9]
    assert np.abs(rotated).max() <= 10.0 + 1e-6
    assert rotated.min() < -9.5 and rotated.max() > 9.5  # degrees, not radians
    assert abs(np.mean(rotated)) < 0.5


def test_shift_is_a_fraction_of_the_frame_size_up_to_one_sixteenth(drawn):
    shifts = drawn[3]
    moved = shifts[np.abs(shifts).max(axis=1) > 1e-12]
    magnitudes = np.abs(moved)
    assert magnitudes.min() > 0.0 and magnitudes.max() <= 0.0625 + 1e-9  # (0, 0.0625] on each axis
    assert magnitudes.max() > 0.06  # scaled by the frame size, not left in ratio units
    for axis in (0, 1):  # both signs, about equally often
        assert abs((moved[:, axis] > 0).mean() - 0.5) < 2 * TOLERANCE


def test_one_transform_per_clip_moves_every_frame_alike():
    augmentation = DSAClipAugmentation.from_config(make_cfg(frame_size=FRAME_SIZE, force_aug=True))
    np.random.seed(1)  # noqa: NPY002
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, SOURCE, dtype=np.uint8) for _ in range(5)]
    transform = augmentation.get_transform(frames[2])
    warped = transform.apply_frames(frames)
    for frame, out in zip(frames, warped):
        np.testing.assert_array_equal(out, transform.apply_image(frame))
