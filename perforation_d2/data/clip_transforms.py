"""One geometric transform for every frame of a clip (SPEC section 2).

The resize to ``INPUT.FRAME_SIZE`` and the training augmentation (horizontal flip, shift, scale,
rotation) are composed into ONE affine matrix per clip, so each frame is resampled once, in
uint8, by a single ``cv2.warpAffine``. Frames are warped four at a time as the channels of one
image: OpenCV's 4-channel bilinear path costs little more than its 1-channel path, which is what
keeps a 5-frame clip under 3x the cost of a single frame.

Coordinates follow Detectron2: continuous, pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``, so a
box and the pixels it encloses move together. The matrix is stored in these coordinates;
OpenCV's pixel-centre convention is converted once, in :meth:`ClipAffineTransform.cv2_matrix`.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from detectron2.data.transforms import Augmentation, Transform

# Frames warped together as the channels of one image (OpenCV's fast bilinear path has 4).
_CHANNELS_PER_WARP = 4


def _translation(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]])


class ClipAffineTransform(Transform):
    """An affine map (3x3, continuous coordinates, source -> output) onto an ``out_h x out_w`` frame.

    Pixels outside the source frame are filled with 0 (black), never mirrored: a mirrored
    copy of a perforation would be an unlabelled positive.
    """

    def __init__(self, matrix: np.ndarray, src_h: int, src_w: int, out_h: int, out_w: int):
        super().__init__()
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.shape == (2, 3):
            matrix = np.vstack([matrix, [0.0, 0.0, 1.0]])
        self.matrix = matrix
        self.src_h, self.src_w, self.out_h, self.out_w = int(src_h), int(src_w), int(out_h), int(out_w)

    @classmethod
    def resize(cls, src_h: int, src_w: int, out_h: int, out_w: int) -> ClipAffineTransform:
        matrix = np.diag([out_w / src_w, out_h / src_h, 1.0])
        return cls(matrix, src_h, src_w, out_h, out_w)

    def cv2_matrix(self) -> np.ndarray:
        """The 2x3 matrix in OpenCV's pixel-centre coordinates (centre of pixel j is x = j)."""
        return (_translation(-0.5, -0.5) @ self.matrix @ _translation(0.5, 0.5))[:2]

    def _fast_path(self) -> str:
        """"identity", "resize", "resize_hflip" or "warp": the cheapest exact way to apply it."""
        m = self.matrix
        sx, sy = self.out_w / self.src_w, self.out_h / self.src_h
        if not np.allclose(m[1], [0.0, sy, 0.0], rtol=0, atol=1e-12) or abs(m[0, 1]) > 1e-12:
            return "warp"
        if abs(m[0, 0] - sx) < 1e-12 and abs(m[0, 2]) < 1e-9:
            return "identity" if (self.out_h, self.out_w) == (self.src_h, self.src_w) else "resize"
        if abs(m[0, 0] + sx) < 1e-12 and abs(m[0, 2] - self.out_w) < 1e-9:
            return "resize_hflip"
        return "warp"

    def _apply(self, image: np.ndarray, path: str) -> np.ndarray:
        if path == "identity":
            return image
        size = (self.out_w, self.out_h)
        if path == "warp":
            return cv2.warpAffine(image, self.cv2_matrix(), size, flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if (image.shape[1], image.shape[0]) != size:
            image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if path == "resize_hflip":
            image = np.ascontiguousarray(image[:, ::-1])
        return image

    def apply_image(self, img: np.ndarray, interp: int | None = None) -> np.ndarray:
        """Warp one frame, ``(H, W)`` or ``(H, W, C)`` uint8 (bilinear)."""
        return self._apply(img, self._fast_path())

    def apply_frames(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        """Warp grey ``(H, W)`` frames with the same transform, four per OpenCV call."""
        path = self._fast_path()
        if path == "identity":
            return list(frames)
        out: list[np.ndarray] = []
        for start in range(0, len(frames), _CHANNELS_PER_WARP):
            group = frames[start:start + _CHANNELS_PER_WARP]
            if len(group) == 1:
                out.append(self._apply(group[0], path))
                continue
            # 2 or 3 frames: pad to 4 channels, OpenCV's 3-channel path is slower than its 4.
            padded = group + [group[-1]] * (_CHANNELS_PER_WARP - len(group))
            warped = self._apply(cv2.merge(padded), path)
            out.extend(cv2.split(warped)[: len(group)])
        return out

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = np.asarray(coords, dtype=np.float64)
        return coords @ self.matrix[:2, :2].T + self.matrix[:2, 2]

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        if self._fast_path() == "identity":
            return segmentation
        return cv2.warpAffine(segmentation, self.cv2_matrix(), (self.out_w, self.out_h),
                              flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


class DSAClipAugmentation(Augmentation):
    """Resize to ``frame_size`` square plus the paper's augmentation, drawn once per clip.

    Each of horizontal flip, shift, scale and rotation is applied with its own probability:
    shift moves the frame by ``r * frame_size`` along each axis independently, with
    ``|r|`` uniform in ``(0, shift_limit]`` and a random sign; scale multiplies by
    ``1 + U[-scale_limit, scale_limit]``; rotation turns by ``U[-rotate_limit, rotate_limit]``
    degrees. Scale and rotation are about the frame centre. Randomness comes from
    ``np.random`` like Detectron2's own augmentations (seeded per data-loader worker).
    """

    def __init__(
        self,
        frame_size: int,
        hflip_prob: float = 0.5,
        shift_prob: float = 0.5,
        shift_limit: float = 0.0625,
        scale_prob: float = 0.5,
        scale_limit: float = 0.1,
        rotate_prob: float = 0.5,
        rotate_limit: float = 10.0,
    ):
        super().__init__()
        self._init(locals())

    @classmethod
    def from_config(cls, cfg) -> DSAClipAugmentation:
        aug = cfg.INPUT.DSA_AUG
        return cls(
            frame_size=cfg.INPUT.FRAME_SIZE,
            hflip_prob=aug.HFLIP_PROB, shift_prob=aug.SHIFT_PROB, shift_limit=aug.SHIFT_LIMIT,
            scale_prob=aug.SCALE_PROB, scale_limit=aug.SCALE_LIMIT,
            rotate_prob=aug.ROTATE_PROB, rotate_limit=aug.ROTATE_LIMIT,
        )

    def get_transform(self, image: np.ndarray) -> ClipAffineTransform:
        src_h, src_w = image.shape[:2]
        size = float(self.frame_size)
        matrix = np.diag([size / src_w, size / src_h, 1.0])
        # _rand_range draws from np.random, which Detectron2 seeds in every data-loader worker.
        if self._rand_range() < self.hflip_prob:
            matrix = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ matrix
        scale = 1.0
        if self._rand_range() < self.scale_prob:
            scale = 1.0 + self._rand_range(-self.scale_limit, self.scale_limit)
        angle = 0.0
        if self._rand_range() < self.rotate_prob:
            angle = math.radians(self._rand_range(-self.rotate_limit, self.rotate_limit))
        if scale != 1.0 or angle != 0.0:
            cos, sin = scale * math.cos(angle), scale * math.sin(angle)
            about_centre = np.array([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]])
            centre = size / 2.0
            matrix = _translation(centre, centre) @ about_centre @ _translation(-centre, -centre) @ matrix
        if self._rand_range() < self.shift_prob:
            # |ratio| in (0, limit]: 1 - U[0, 1) never reaches 0, so a drawn shift always moves.
            dx, dy = (
                (1.0 if self._rand_range() < 0.5 else -1.0) * self.shift_limit * (1.0 - self._rand_range()) * size
                for _ in range(2)
            )
            matrix = _translation(dx, dy) @ matrix
        return ClipAffineTransform(matrix, src_h, src_w, self.frame_size, self.frame_size)
