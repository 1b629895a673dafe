"""Config keys of perforation_d2, added on top of Detectron2's defaults."""

from __future__ import annotations

from pathlib import Path

from detectron2.config import CfgNode as CN

# The YAML configs ship inside the package (``configs/`` at the repository root links here), so
# an installed package finds them wherever it runs.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def config_path(name: str) -> Path:
    """The packaged config ``name`` (e.g. ``"quick/retinanet.yaml"``); a clear error if absent."""
    from .errors import DSAInputError

    path = CONFIG_DIR / name
    if not path.is_file():
        raise DSAInputError(f"{path}: no such packaged config (they live under {CONFIG_DIR}).")
    return path


def add_perforation_config(cfg: CN) -> None:
    """Add perforation_d2's keys (with the paper's defaults) to a Detectron2 config in place."""
    _C = cfg

    # ---- clips and temporal fusion (paper section 2.3) --------------------------------------
    _C.MODEL.TEMPORAL = CN()
    # T = 2k + 1 frames centred on the annotated frame (t-k .. t+k); 1 = single-frame baseline.
    _C.MODEL.TEMPORAL.NUM_FRAMES = 5
    # Name in TEMPORAL_MODULE_REGISTRY: TemporalConv, TemporalAttention, BiConvGRU, BiConvLSTM.
    # Ignored when NUM_FRAMES == 1.
    _C.MODEL.TEMPORAL.MODULE = "TemporalConv"
    # Spatial kernel of the ConvGRU / ConvLSTM gates.
    _C.MODEL.TEMPORAL.RNN_KERNEL_SIZE = 3
    # Channels of the attention queries/keys (values keep the FPN's channels).
    _C.MODEL.TEMPORAL.ATTENTION_DIM = 64
    # Recompute the per-frame backbone's activations in the backward pass (torch.utils.checkpoint)
    # so that long clips (T=9) train in the memory a T=5 clip needs without it.
    _C.MODEL.TEMPORAL.CHECKPOINT_BACKBONE = False
    # Frames per checkpointed segment: the backward pass recomputes one segment at a time, so
    # smaller segments need less memory but run slower (640 px R50, H200: 2 clips of T=9 need
    # 3.6 GB with 4, 7.2 GB with 9, 13.5 GB not checkpointed). BatchNorm in train mode then
    # normalises per segment.
    _C.MODEL.TEMPORAL.CHECKPOINT_CHUNK_FRAMES = 4
    # Spatial backbone run on every frame of a clip (a Detectron2 BACKBONE_REGISTRY name), used
    # by build_temporal_backbone; build_temporal_retinanet_resnet_fpn_backbone (P3-P7) and
    # build_temporal_resnet_fpn_backbone (P2-P6) fix their own spatial builder.
    _C.MODEL.TEMPORAL.SPATIAL_BACKBONE = "build_retinanet_resnet_fpn_backbone"
    # TemporalConv starts as the identity on the centre frame (True) or as the mean over the
    # clip (False, the default). The mean is a persistence filter from the first iteration: a
    # perforation that stays for the whole clip keeps its full response while a one-frame
    # look-alike is diluted. On the synthetic cohort (demo settings, 500 iterations) it gave
    # series AUC 0.91-0.93 where the centre start gave 0.72, no better than a single frame.
    _C.MODEL.TEMPORAL.CENTRE_INIT = False

    # ---- DR-IoU box regression loss (paper section 2.2) -------------------------------------
    _C.MODEL.DR_IOU = CN()
    _C.MODEL.DR_IOU.BETA = 0.25

    # ---- input and augmentation (paper section 4.1; SPEC section 2) -------------------------
    # Frames are resized (not aspect-preserving) to FRAME_SIZE x FRAME_SIZE.
    _C.INPUT.FRAME_SIZE = 640
    _C.INPUT.DSA_AUG = CN()
    _C.INPUT.DSA_AUG.ENABLED = True
    _C.INPUT.DSA_AUG.HFLIP_PROB = 0.5
    _C.INPUT.DSA_AUG.SHIFT_PROB = 0.5
    _C.INPUT.DSA_AUG.SHIFT_LIMIT = 0.0625  # fraction of the frame size, sampled in (0, limit]
    _C.INPUT.DSA_AUG.SCALE_PROB = 0.5
    _C.INPUT.DSA_AUG.SCALE_LIMIT = 0.1  # scale factor 1 + U[-limit, limit]
    _C.INPUT.DSA_AUG.ROTATE_PROB = 0.5
    _C.INPUT.DSA_AUG.ROTATE_LIMIT = 10.0  # degrees, U[-limit, limit]
    # Decoded frames kept per data-loading process (LRU), so that overlapping clips of a series
    # decode each frame once. 0 disables the cache.
    _C.INPUT.DSA_FRAME_CACHE_MB = 256

    # ---- optimisation (paper section 4.1) ---------------------------------------------------
    # "exponential" is added by perforation_d2 next to Detectron2's "linear" and "constant".
    _C.SOLVER.WARMUP_METHOD = "exponential"
    # Stop training with the iteration and sample ids when a loss turns NaN/inf.
    _C.SOLVER.STOP_ON_NONFINITE_LOSS = True
    # Iterations between lines of OUTPUT_DIR/metrics.json and the console (Detectron2 fixes 20).
    _C.SOLVER.LOG_PERIOD = 20

    # ---- series-level evaluation (SPEC sections 3 and 4) ------------------------------------
    _C.TEST.DSA = CN()
    _C.TEST.DSA.SERIES_OPTIMIZATION = True
    # Operating point stored with the model and used by `predict`: "youden" or "spec95".
    _C.TEST.DSA.OPERATING_POINT = "youden"
    # Metric watched by BestCheckpointer (a key of metrics.json, under the "dsa" task).
    _C.TEST.DSA.BEST_METRIC = "AUC"
    # Run the backbone once per frame and reuse it across overlapping clips at test time.
    _C.TEST.DSA.CACHED_SERIES_INFERENCE = True
    # Series inference runs in strict FP32 on CUDA by default, so cached and per-clip results
    # agree to 1e-4. True keeps PyTorch's TF32 instead: on an H200 at 640 px that took BiConvLSTM
    # from 4.9 to 86 frames/s, with boxes then differing between the two paths by up to 5e-3 px.
    _C.TEST.DSA.ALLOW_TF32 = False

    # ---- cohorts ---------------------------------------------------------------------------
    _C.DATASETS.DSA = CN()
    # Extra cohort folders (each with cohort.json, optionally splits.json) registered at
    # config time, in addition to those found under $DETECTRON2_DATASETS.
    _C.DATASETS.DSA.COHORT_DIRS = []
