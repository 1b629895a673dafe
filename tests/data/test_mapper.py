"""DSAClipMapper: clip assembly, edge repetition, one augmentation per clip, frame reading."""

from __future__ import annotations

import numpy as np
import pytest
from detectron2.utils.env import seed_all_rng
from helpers.cohorts import SQUARE_VALUE, frame_background, make_cfg, make_toy_cohort
from PIL import Image

from perforation_d2.data.clip_transforms import ClipAffineTransform, DSAClipAugmentation
from perforation_d2.data.cohort import load_cohort
from perforation_d2.data.mapper import DSAClipMapper, check_input_config, clip_indices, read_grey_frame
from perforation_d2.data.register import cohort_dataset_dicts
from perforation_d2.errors import DSAInputError


def toy_dicts(root, **kwargs) -> list[dict]:
    json_file = make_toy_cohort(root, **kwargs)
    return cohort_dataset_dicts(load_cohort(json_file), json_file.parent)


def test_clip_indices_repeat_edges():
    assert clip_indices(0, 10, 5) == [0, 0, 0, 1, 2]
    assert clip_indices(9, 10, 5) == [7, 8, 9, 9, 9]
    assert clip_indices(1, 2, 5) == [0, 0, 1, 1, 1]
    assert clip_indices(0, 1, 7) == [0] * 7
    assert clip_indices(4, 10, 1) == [4]


def test_edge_repetition_in_the_mapped_clip(tmp_path):
    dicts = toy_dicts(tmp_path / "c", num_patients=3, frames=[6, 1, 2], positive_patients=[])
    for num_frames in (1, 5, 7):
        mapper = DSAClipMapper(make_cfg(num_frames), is_train=False)
        for d in dicts:
            out = mapper(d)
            image = out["image"]
            assert image.shape == (num_frames, 3, 64, 64) and str(image.dtype) == "torch.uint8"
            expected = [frame_background(i) for i in clip_indices(d["frame_id"], d["num_frames"], num_frames)]
            # Identity resize: every pixel is the frame's background, in all 3 channels.
            assert image[:, :, 0, 0].tolist() == [[v] * 3 for v in expected]
            assert image.amin(dim=(1, 2, 3)).tolist() == expected
            assert image.amax(dim=(1, 2, 3)).tolist() == expected


def test_output_fields_and_input_untouched(tmp_path):
    dicts = toy_dicts(tmp_path / "c", num_patients=1, frames=3, size=48)
    d = dicts[1]
    before = repr(d)
    out = DSAClipMapper(make_cfg(3, 96), is_train=False)(d)
    assert repr(d) == before
    assert "annotations" not in out
    assert (out["height"], out["width"]) == (48, 48)
    for key in ("image_id", "video_id", "frame_id", "file_name", "patient_id", "series_file_names"):
        assert out[key] == d[key]
    # No augmentation: the box is just scaled by 96/48.
    x, y, w, h = d["annotations"][0]["bbox"]
    assert out["instances"].gt_boxes.tensor.tolist() == [[2 * x, 2 * y, 2 * (x + w), 2 * (y + h)]]
    assert out["instances"].gt_classes.tolist() == [0]


@pytest.mark.parametrize("size,frame_size", [(64, 96), (96, 64)])
def test_augmented_clip_is_geometrically_consistent(tmp_path, size, frame_size):
    """The square drawn in every frame stays inside the transformed box, in every frame alike."""
    dicts = toy_dicts(tmp_path / "c", num_patients=1, frames=6, size=size, box_size=size // 5)
    mapper = DSAClipMapper(make_cfg(5, frame_size, force_aug=True), is_train=True)
    for seed in range(8):
        seed_all_rng(seed)
        d = dicts[seed % 3]  # frame 0, 1, 2: edge-repeated clips too
        out = mapper(d)
        boxes = out["instances"].gt_boxes.tensor.numpy()
        assert boxes.shape == (1, 4)
        x0, y0, x1, y1 = boxes[0]
        indices = clip_indices(d["frame_id"], d["num_frames"], 5)
        weights = []
        for slot, index in enumerate(indices):
            frame = out["image"][slot, 0].numpy().astype(np.float64)
            assert (out["image"][slot] == out["image"][slot, :1]).all()  # grey replicated
            background = frame_background(index)
            weight = (frame - background) / (SQUARE_VALUE - background)  # 1 inside the square
            ys, xs = np.nonzero(weight > 0.55)
            assert len(xs) > 0
            centres_x, centres_y = xs + 0.5, ys + 0.5
            assert centres_x.min() >= x0 - 1e-6 and centres_x.max() <= x1 + 1e-6, (seed, slot)
            assert centres_y.min() >= y0 - 1e-6 and centres_y.max() <= y1 + 1e-6, (seed, slot)
            # ...and the box is not loose: the square reaches within 2.5 px of every side.
            assert centres_x.min() - x0 < 2.5 and x1 - centres_x.max() < 2.5, (seed, slot)
            assert centres_y.min() - y0 < 2.5 and y1 - centres_y.max() < 2.5, (seed, slot)
            weights.append(weight)
        # Same transform for every frame: the square lands on the same pixels (compared near the
        # box, away from the black fill at the borders whose weight depends on the background).
        near = (slice(max(0, int(y0) - 3), int(y1) + 4), slice(max(0, int(x0) - 3), int(x1) + 4))
        for weight in weights[1:]:
            assert np.abs(weight[near] - weights[0][near]).max() < 0.05, seed


def test_forced_flip_mirrors_box_and_pixels(tmp_path):
    dicts = toy_dicts(tmp_path / "c", num_patients=1, frames=1, size=64)
    cfg = make_cfg(1, 64)
    cfg.INPUT.DSA_AUG.HFLIP_PROB = 1.0
    for key in ("SHIFT_PROB", "SCALE_PROB", "ROTATE_PROB"):
        cfg.INPUT.DSA_AUG[key] = 0.0
    out = DSAClipMapper(cfg, is_train=True)(dicts[0])
    x, y, w, h = dicts[0]["annotations"][0]["bbox"]
    assert out["instances"].gt_boxes.tensor.tolist() == [[64 - x - w, y, 64 - x, y + h]]
    source = np.asarray(Image.open(dicts[0]["file_name"]))
    assert (out["image"][0, 0].numpy() == source[:, ::-1]).all()


def test_boxes_pushed_out_of_the_frame_are_dropped(tmp_path):
    dicts = toy_dicts(tmp_path / "c", num_patients=1, frames=1, size=64)
    d = dict(dicts[0], annotations=[
        {"bbox": [0.0, 10.0, 3.0, 10.0], "bbox_mode": dicts[0]["annotations"][0]["bbox_mode"], "category_id": 0},
        dicts[0]["annotations"][0],
    ])
    transform = ClipAffineTransform(np.array([[1.0, 0, -8.0], [0, 1.0, 0]]), 64, 64, 64, 64)  # 8 px left

    class FixedShift(DSAClipAugmentation):
        def get_transform(self, image):
            return transform

    mapper = DSAClipMapper(is_train=True, num_frames=1, frame_size=64, augmentation=FixedShift(64))
    out = mapper(d)
    x, y, w, h = dicts[0]["annotations"][0]["bbox"]
    assert out["instances"].gt_boxes.tensor.tolist() == [[x - 8, y, x + w - 8, y + h]]


def test_grouped_warp_equals_frame_by_frame():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 50), dtype=np.uint8) for _ in range(7)]
    seed_all_rng(3)
    aug = DSAClipAugmentation(32, hflip_prob=1, shift_prob=1, scale_prob=1, rotate_prob=1)
    transform = aug.get_transform(frames[0])
    together = transform.apply_frames(frames)
    assert len(together) == 7
    for frame, warped in zip(frames, together):
        assert warped.shape == (32, 32)
        assert np.abs(warped.astype(int) - transform.apply_image(frame).astype(int)).max() <= 1


def test_invalid_clip_length_and_sizes():
    for bad in (0, 2, 4, -1):
        with pytest.raises(DSAInputError, match=r"NUM_FRAMES = .*odd number of frames \(1, 3, 5"):
            DSAClipMapper(make_cfg(bad), is_train=True)
    with pytest.raises(DSAInputError, match="FRAME_SIZE"):
        DSAClipMapper(make_cfg(5, 0), is_train=False)
    cfg = make_cfg()
    cfg.INPUT.DSA_AUG.ROTATE_PROB = 1.5
    with pytest.raises(DSAInputError, match="ROTATE_PROB"):
        DSAClipMapper(cfg, is_train=True)


def test_frame_size_differing_from_the_cohort_is_rejected(tmp_path):
    dicts = toy_dicts(tmp_path / "c", num_patients=1, frames=3)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(dicts[2]["file_name"])
    mapper = DSAClipMapper(make_cfg(3), is_train=False)
    mapper(dicts[0])  # frames 0, 0, 1: fine
    with pytest.raises(DSAInputError) as info:
        mapper(dicts[1])
    assert dicts[2]["file_name"] in str(info.value) and "40x32" in str(info.value) and "64x64" in str(info.value)


def test_reads_16_bit_and_rgb_png(tmp_path):
    values = np.array([[0, 257, 128 * 257], [65535, 200 * 257, 1000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert read_grey_frame(str(tmp_path / "deep.png")).tolist() == [[0, 1, 128], [255, 200, 4]]

    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (90, 90, 90)
    rgb[1, 1] = (255, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    grey = read_grey_frame(str(tmp_path / "rgb.png"))
    assert grey.dtype == np.uint8 and grey[0, 0] == 90 and grey[1, 1] == 76  # luminance of pure red

    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(DSAInputError, match="junk.png"):
        read_grey_frame(str(tmp_path / "junk.png"))
    with pytest.raises(DSAInputError, match="absent.png"):
        read_grey_frame(str(tmp_path / "absent.png"))


def test_16_bit_cohort_maps_like_8_bit(tmp_path):
    eight = toy_dicts(tmp_path / "a", num_patients=1, frames=3)
    sixteen = toy_dicts(tmp_path / "b", num_patients=1, frames=3, bit_depth=16)
    mapper = DSAClipMapper(make_cfg(3, 80), is_train=False)
    assert (mapper(eight[1])["image"] == mapper(sixteen[1])["image"]).all()


def test_consecutive_clips_decode_each_frame_once(tmp_path):
    dicts = toy_dicts(tmp_path / "c", num_patients=1, frames=8)
    mapper = DSAClipMapper(make_cfg(5), is_train=False)
    for d in dicts:
        mapper(d)
    # 40 clip slots, 6 of them edge repeats read once per clip, 8 distinct frames decoded.
    assert mapper.cache.misses == 8 and mapper.cache.hits == 40 - 6 - 8

    uncached = DSAClipMapper(is_train=False, num_frames=5, frame_size=64, cache_mb=0)
    first = uncached(dicts[3])["image"]
    assert uncached.cache.misses == 5 and len(uncached.cache) == 0
    assert (first == mapper(dicts[3])["image"]).all()


@pytest.mark.parametrize("key,value,message", [
    ("INPUT.FRAME_SIZE", "0", "INPUT.FRAME_SIZE = 0 is not a valid frame size"),
    ("INPUT.FRAME_SIZE", "1000000", "up to 4096"),
    ("MODEL.TEMPORAL.NUM_FRAMES", "4", "odd number of frames"),
    ("INPUT.DSA_AUG.SHIFT_LIMIT", "2.0", "SHIFT_LIMIT must be in (0, 1)"),
])
def test_bad_clip_settings_stop_train_before_any_work(tmp_path, capsys, key, value, message):
    """check_input_config runs when the config is built: one paragraph, nothing built or written."""
    from perforation_d2.cli import main

    out = tmp_path / "out"
    code = main(["train", "--config-file", "configs/quick/retinanet_tconv_T5.yaml", key, value,
                 "OUTPUT_DIR", str(out), "MODEL.DEVICE", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()


def test_check_input_config_accepts_the_defaults():
    check_input_config(make_cfg())  # no exception
    cfg = make_cfg(frame_size=4096)
    check_input_config(cfg)
    cfg.INPUT.FRAME_SIZE = True  # a YAML "yes" is not a size
    with pytest.raises(DSAInputError, match="FRAME_SIZE = True"):
        check_input_config(cfg)
