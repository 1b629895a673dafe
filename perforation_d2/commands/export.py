"""``python -m perforation_d2 export``: a trained model as ONNX graphs for deployment runtimes.

::

    python -m perforation_d2 export --config-file CFG --weights W --out DIR
        [--exporter dynamo|torchscript] [--overwrite] [KEY VALUE ...]

Writes ``DIR/backbone.onnx`` (per-frame backbone), ``DIR/head.onnx`` (temporal module + head; for
Faster / Cascade R-CNN the fusion alone, with ``rpn_head.onnx``, ``box_pooler.onnx`` and one
``box_head_<stage>.onnx`` per stage) and ``DIR/export.json`` (config, weights fingerprint,
operating points, input contract, the check against PyTorch), as one set
(:mod:`perforation_d2.export`).
``predict --runtime onnxruntime --onnx DIR`` runs series through them.
"""

from __future__ import annotations

import argparse

from ..export import EXPORTERS, export_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config-file", required=True, metavar="CFG", help="the config the model was trained with")
    parser.add_argument("--weights", required=True, metavar="W", help="trained weights (.pth)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch.onnx exporter (default dynamo; torchscript is PyTorch's legacy one)")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier export")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE",
                        help="config overrides, as for train_net.py")


def run(args: argparse.Namespace) -> int:
    record = export_model(args.config_file, args.weights, args.out, overwrite=args.overwrite, opts=args.opts,
                          exporter=args.exporter)
    worst = max(max(run["relative_difference"].values()) for run in record["check"]["runs"])
    points = ", ".join(f"{k} {v['threshold']:.4f}" for k, v in record["operating_points"].items()) or "none stored"
    files = ", ".join(entry["file"] for entry in record["files"].values())
    print(f"exported to {args.out}: {files}, export.json "
          f"(largest relative difference to PyTorch {worst:.1e}; operating points: {points})")
    return 0
