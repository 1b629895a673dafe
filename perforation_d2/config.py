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
    # Where the clip is fused: "features" (the paper's: the backbone runs on every frame and
    # MODULE fuses the T maps of each FPN level) or "input" (early fusion: the T grey frames are
    # the backbone's input channels, one pass per clip; MODULE is not used). See
    # modeling/backbone.py for why input fusion learns a time course faster.
    _C.MODEL.TEMPORAL.FUSION = "features"
    # Under input fusion, what the stem sees of the clip (modeling/time_course.py), stacked in this
    # order: "frames" (the T frames), "extrema" (rise above / fall below the centre frame before
    # and after it, 4 maps) and "differences" (the T-1 frame-to-frame changes).
    _C.MODEL.TEMPORAL.INPUT_MAPS = ["frames"]
    # Duration of a clip in ms (0: T consecutive frames). Frame rates vary from 0.5 to 4 frames/s, so
    # T consecutive frames span 4x to 0.5x of a perforation's time course; with a span > 0 slot j takes
    # the frame nearest to time(t) + j * CLIP_SPAN_MS / (T - 1), from the series' frame_time_ms
    # (data/mapper.py clip_indices). A series without a frame time is then an error.
    _C.MODEL.TEMPORAL.CLIP_SPAN_MS = 0.0
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
    # TemporalAttention learns one key offset per clip slot (started as a sinusoidal encoding)
    # and one value offset per slot (started at 0), so its weights and output depend on frame
    # order: without it a clip and its reverse give the same output, so wash-in (a perforation
    # filling) and wash-out (a vessel emptying) look alike. Off by default so that existing
    # attention checkpoints load and keep their results.
    _C.MODEL.TEMPORAL.ORDER_ENCODING = False

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

    # ---- training sampler ------------------------------------------------------------------
    # > 0: draw each training frame from the frames with a perforation box with this probability
    # (else from those without), instead of uniformly. With a quarter of the frames positive and
    # two frames per batch, uniform sampling leaves more than half of the batches without any
    # box to regress; 0.5 leaves a quarter. 0 keeps Detectron2's uniform TrainingSampler.
    _C.DATALOADER.DSA_POSITIVE_FRACTION = 0.0

    # ---- series-level evaluation (SPEC sections 3 and 4) ------------------------------------
    _C.TEST.DSA = CN()
    _C.TEST.DSA.SERIES_OPTIMIZATION = True
    # Operating point stored with the model and used by `predict`: "youden" or "spec95".
    _C.TEST.DSA.OPERATING_POINT = "youden"
    # Metric watched by BestCheckpointer (a key of metrics.json, under the "dsa" task).
    _C.TEST.DSA.BEST_METRIC = "AUC"
    # Run the backbone once per frame and reuse it across overlapping clips at test time.
    _C.TEST.DSA.CACHED_SERIES_INFERENCE = True
    # Arithmetic of series inference (predict, evaluation): "fp32" (strict, TF32 off; cached and
    # per-clip results agree to 1e-4 on CUDA), "tf32" (TF32 tensor cores on CUDA: on an H200 at
    # 640 px BiConvLSTM went from 4.9 to 86 frames/s, boxes then differing by up to 5e-3 px),
    # "bf16" or "fp16" (autocast). See perforation_d2.modeling.precision.
    _C.TEST.DSA.PRECISION = "fp32"
    # Deprecated: True means TEST.DSA.PRECISION "tf32".
    _C.TEST.DSA.ALLOW_TF32 = False
    # Time-use diagnostic (perforation_d2.data.clip_ablation): rebuild every test clip as "none"
    # (as it is), "centre" (centre frame repeated), "reverse" or "shuffle" (context frames
    # reordered). A model that uses the time course loses AUC without it; a single-frame model is
    # unaffected. Test-time only; training clips are never ablated.
    _C.TEST.DSA.CLIP_ABLATION = "none"
    # Evaluate a temporal model under every clip ablation after training and in --eval-only, and
    # write OUTPUT_DIR/time_use.json (AUC and sensitivity at 95% specificity per ablation), with
    # each ablation's predictions under OUTPUT_DIR/inference/<dataset>/clip_<ablation>/.
    _C.TEST.DSA.TIME_USE_DIAGNOSTIC = False

    # ---- cohorts ---------------------------------------------------------------------------
    _C.DATASETS.DSA = CN()
    # Extra cohort folders (each with cohort.json, optionally splits.json) registered at
    # config time, in addition to those found under $DETECTRON2_DATASETS.
    _C.DATASETS.DSA.COHORT_DIRS = []
    # One cohort JSON (anywhere) registered as COHORT_NAME, with the folds of SPLITS_JSON as
    # <COHORT_NAME>_fold{k}_train / _val (and _loco_<site>_*): how cross-validate's jobs name the
    # split they train on without copying the cohort next to a splits.json.
    _C.DATASETS.DSA.COHORT_JSON = ""
    _C.DATASETS.DSA.SPLITS_JSON = ""
    _C.DATASETS.DSA.COHORT_NAME = "cohort"
