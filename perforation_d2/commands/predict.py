"""``python -m perforation_d2 predict``: a trained model on DICOM series or a cohort, with a decision.

::

    python -m perforation_d2 predict --config-file CFG --weights W --input PATH --out DIR
        [--threshold X | --operating-point youden|spec95] [--device cpu|cuda] [--overwrite]
        [--strict] [--salt SALT] [--batch-size N] [--resume] [--runtime onnxruntime --onnx EXPORT_DIR]
        [--num-gpus N] [--num-machines M --machine-rank R --dist-url tcp://HOST:PORT] [KEY VALUE ...]

``PATH`` is a multi-frame DICOM file, a folder of DICOM files (one or more series; every file left
out is listed with its reason, ``--strict`` refuses the input instead) or a cohort JSON. Every
series is predicted whole with the cached series inference (the backbone runs once per frame),
then series-level optimisation keeps one trajectory per series. The outputs in ``DIR`` are
described in :mod:`perforation_d2.inference.result`; ``manifest.json`` is written last.

DICOM series names and patient ids are pseudonymised with ``--salt``, else
``$PERFORATION_D2_SALT``, else the per-user salt file that ``prepare-dicom`` uses, so names agree
across runs and with your imports. No DICOM attribute value or salt reaches any output or message.

The decision threshold is the operating point stored with the model (``--operating-point``,
default the config's ``TEST.DSA.OPERATING_POINT``); ``--threshold`` overrides it.

An archive: ``--num-gpus N`` (and ``--num-machines`` / ``--machine-rank`` / ``--dist-url``, as for
training) shards the series over Detectron2 ``launch`` workers, CPU workers with gloo; the
outputs are those of one process, byte for byte. ``--resume`` keeps each finished series in
``DIR/progress/`` so that a run into the same ``DIR`` after a crash or a kill predicts only the
series still missing (:mod:`perforation_d2.inference.archive`, :mod:`perforation_d2.inference.progress`).
"""

from __future__ import annotations

import argparse
import sys

from ..arguments import bounded_int, finite_float, positive_int
from ..dicom_results.predict_outputs import dicom_outputs
from ..errors import DSAInputError
from ..inference.archive import RunPlan, SeriesFiles, plan_run, predict_series, resume_progress
from ..inference.model import choose_threshold, load_model, resolve_device
from ..inference.result import FIXED_OUTPUTS
from ..inference.sources import find_series


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, metavar="CFG", help="the config the model was trained with")
    parser.add_argument("--weights", required=True, metavar="W", help="trained weights (.pth)")
    parser.add_argument("--input", required=True, metavar="PATH",
                        help="a multi-frame DICOM file, a folder of DICOM files, or a cohort JSON")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument("--threshold", type=finite_float(what="a threshold"), default=None, metavar="X",
                          help="decide 'perforation' at series score >= X instead of the stored operating point")
    decision.add_argument("--operating-point", choices=("youden", "spec95"), default=None,
                          help="which stored operating point decides (default: the config's TEST.DSA.OPERATING_POINT)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None,
                        help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N",
                        help="centre frames per temporal/head batch (memory: N + T - 1 frames of features)")
    parser.add_argument("--runtime", choices=("pytorch", "onnxruntime"), default="pytorch",
                        help="onnxruntime: run the graphs that `export` wrote to --onnx (checked against CFG and W)")
    parser.add_argument("--onnx", default=None, metavar="EXPORT_DIR", help="the export folder, for --runtime onnxruntime")
    parser.add_argument("--salt", default=None,
                        help="pseudonymisation salt for DICOM series and patient ids (default: $PERFORATION_D2_SALT, "
                             "else the per-user salt file $PERFORATION_D2_SALT_FILE, default "
                             "~/.config/perforation_d2/salt)")
    parser.add_argument("--strict", action="store_true",
                        help="fail, before writing anything, when any file of a DICOM folder is skipped")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run")
    parser.add_argument("--dicom-out", action="store_true",
                        help="also write, for DICOM input, an SR and a Secondary Capture per series into DIR/dicom/ "
                             "(these carry the source's patient and study identifiers, to be sent to the PACS)")
    parser.add_argument("--gsps", action="store_true", help="with --dicom-out: also a presentation state per series")
    parser.add_argument("--resume", action="store_true",
                        help="keep each finished series in DIR/progress/; run again with --resume after a crash or "
                             "a kill to predict only the series still missing (same model, threshold and input)")
    parser.add_argument("--num-gpus", type=positive_int, default=1, metavar="N",
                        help="worker processes on this machine, one per GPU (on CPU: N processes with gloo); the "
                             "series are shared between them")
    parser.add_argument("--num-machines", type=positive_int, default=1, metavar="M", help="machines in the run")
    parser.add_argument("--machine-rank", type=bounded_int(0, 2**31 - 1, "a machine rank"), default=0, metavar="R",
                        help="this machine's rank, 0 .. M-1 (rank 0 writes the outputs)")
    parser.add_argument("--dist-url", default="auto", metavar="URL",
                        help="tcp://HOST:PORT of machine 0 (default auto: a free local port, one machine only)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, as for train_net.py")


def _fingerprint_settings(args: argparse.Namespace) -> dict:
    """The options, besides config, weights, threshold and input, that change what a series' outputs are:
    ``--resume`` never mixes series predicted with different values."""
    return {"batch_size": args.batch_size, "dicom_out": args.dicom_out, "gsps": args.gsps, "runtime": args.runtime}


def run(args: argparse.Namespace) -> int:
    world_size = args.num_gpus * args.num_machines
    if args.machine_rank >= args.num_machines:
        raise DSAInputError(f"--machine-rank {args.machine_rank}: must be below --num-machines {args.num_machines}.")
    if args.num_machines > 1 and args.dist_url == "auto":
        raise DSAInputError("--num-machines > 1 needs --dist-url tcp://HOST:PORT of machine 0 (auto is one machine only).")
    device = "cpu" if args.runtime == "onnxruntime" else resolve_device(args.device)  # torch only decodes there
    # Checked before any work: a folder that is not this command's, outputs without --overwrite, progress.
    outputs, recorded = plan_run(args.out, args.overwrite, args.resume, FIXED_OUTPUTS)
    # The model and its threshold first: a wrong config or weights fails in seconds, before a long folder scan.
    cfg, model, extras = load_model(args.config_file, args.weights, device, args.opts)
    threshold = choose_threshold(
        args.weights, extras, args.operating_point or cfg.TEST.DSA.OPERATING_POINT, args.threshold,
        cfg.TEST.DSA.SERIES_OPTIMIZATION,
    )
    found = find_series(args.input, args.salt, strict=args.strict)
    progress = (resume_progress(args.out, recorded, args.overwrite, cfg, args.weights, threshold, found,
                                _fingerprint_settings(args)) if args.resume else None)
    plan = RunPlan(outputs, threshold, [(s.video_id, s.name, s.num_frames) for s in found.sources], progress)
    if world_size == 1:
        _predict_process(args, plan, device, (cfg, model, found))
        return 0
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException

    from ..engine.trainer import prepare_launch

    # CPU workers communicate with gloo: CUDA hidden from them (and SyncBN refused), as for training.
    prepare_launch(cfg, argparse.Namespace(eval_only=True, resume=True, num_gpus=args.num_gpus,
                                           num_machines=args.num_machines))
    del model, found  # each worker loads its own
    try:
        launch(_predict_process, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
               dist_url=args.dist_url, args=(args, plan, device, None))
    except ProcessExitedException as err:
        if err.exit_code == 2:  # the worker printed its error paragraph
            return 2
        raise
    return 0


def _predict_process(args: argparse.Namespace, plan: RunPlan, device: str, loaded: tuple | None) -> None:
    """One process's share of the run (the whole run on one process); rank 0 prints the summary.
    ``loaded``: the launching process's (cfg, model, found series), when it is the only process."""
    import torch

    from ..modeling.series_inference import SeriesPredictor

    try:
        if loaded is None:  # a launched worker: its own model and its own look at the input
            if device == "cpu":
                torch.set_num_threads(max(1, torch.get_num_threads() // args.num_gpus))  # the machine's cores, shared
            cfg, model, _extras = load_model(args.config_file, args.weights, device, args.opts)
            found = find_series(args.input, args.salt, strict=args.strict)
        else:
            cfg, model, found = loaded
        if args.runtime == "onnxruntime":
            from ..export import onnx_series_predictor

            predictor = onnx_series_predictor(args.onnx, cfg, model, args.weights, args.batch_size)
        else:
            predictor = SeriesPredictor.from_config(model, cfg, batch_size=args.batch_size)
        files = SeriesFiles()  # this process's series files (write DICOM results etc. through it)
        on_series = (dicom_outputs(files, plan.threshold, cfg, args.weights, args.input, args.salt, args.gsps)
                     if args.dicom_out else None)
        outcome = predict_series(plan, found, predictor, files, on_series)
    except DSAInputError as err:
        if loaded is not None:
            raise  # one process: cli prints it
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if outcome is None:
        return
    threshold = plan.threshold
    print(f"threshold {threshold.value:.4f} ({threshold.method}, from {threshold.source})")
    for line in outcome.results.summary:
        print(line)
    for skipped in outcome.skipped:
        print(f"skipped: {skipped}", file=sys.stderr)
    if outcome.skipped:
        print(f"{len(outcome.skipped)} input file(s) skipped (listed on stderr); --strict makes any skip an error")
    if plan.progress is not None:
        print(f"resume: {outcome.predicted} series predicted now, {outcome.resumed} taken from the progress of an "
              "earlier run")
    print(f"wrote {len(outcome.files)} files to {args.out}")
