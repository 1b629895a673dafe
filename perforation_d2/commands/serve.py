"""``python -m perforation_d2 serve``: a DICOM node that answers every XA/XRF series with DICOM results.

::

    python -m perforation_d2 serve --ae-title AE --port P [--bind 127.0.0.1] --config-file CFG --weights W
        --destination AE@HOST:PORT --storage DIR [--allow AE ...] [--quiet-s S] [--gsps]
        [--threshold X | --operating-point youden|spec95] [--device cpu|cuda] [--salt SALT] [KEY VALUE ...]

The node answers C-ECHO and accepts C-STORE of XA / XRF images from the ``--allow`` calling AE
titles; once a series is complete it sends a Comprehensive SR and a Secondary Capture (and with
``--gsps`` a presentation state) to ``--destination``. See :mod:`perforation_d2.node`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..arguments import bounded_int, finite_float, positive_int
from ..errors import DSAInputError


def _ae_title(text: str) -> str:
    if not 0 < len(text.strip()) <= 16 or not text.isascii() or "\\" in text:
        raise argparse.ArgumentTypeError(f"an AE title is 1 to 16 ASCII characters without a backslash, got {text!r}")
    return text.strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ae-title", required=True, type=_ae_title, metavar="AE", help="this node's AE title")
    parser.add_argument("--port", required=True, type=bounded_int(0, 65535, "a TCP port"), metavar="P",
                        help="TCP port to listen on (0: any free port, printed at start)")
    parser.add_argument("--bind", default="127.0.0.1", metavar="ADDRESS",
                        help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--config-file", required=True, metavar="CFG", help="the config the model was trained with")
    parser.add_argument("--weights", required=True, metavar="W", help="trained weights (.pth)")
    parser.add_argument("--destination", required=True, metavar="AE@HOST:PORT",
                        help="where results are sent by C-STORE (a PACS or a viewer)")
    parser.add_argument("--storage", required=True, metavar="DIR",
                        help="folder for received instances, the series index, pending and sent results, node.log")
    parser.add_argument("--allow", nargs="+", type=_ae_title, default=[], metavar="AE",
                        help="calling AE titles allowed to send (default: any)")
    parser.add_argument("--quiet-s", type=finite_float(0.0, what="seconds"), default=10.0, metavar="S",
                        help="a series runs once its associations are released and no instance came for S seconds "
                             "(default 10)")
    parser.add_argument("--gsps", action="store_true",
                        help="also send a Grayscale Softcopy Presentation State drawing the boxes on the original frames")
    decision = parser.add_mutually_exclusive_group()
    decision.add_argument("--threshold", type=finite_float(what="a threshold"), default=None, metavar="X",
                          help="decide 'perforation' at series score >= X instead of the stored operating point")
    decision.add_argument("--operating-point", choices=("youden", "spec95"), default=None,
                          help="which stored operating point decides (default: the config's TEST.DSA.OPERATING_POINT)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--batch-size", type=positive_int, default=4, metavar="N",
                        help="centre frames per temporal/head batch")
    parser.add_argument("--queue-size", type=positive_int, default=8, metavar="N",
                        help="complete series waiting for the inference worker at most (default 8)")
    parser.add_argument("--retry-max-s", type=finite_float(0.0, exclusive_minimum=True, what="seconds"), default=60.0,
                        metavar="S", help="longest wait between two attempts to reach the destination (default 60)")
    parser.add_argument("--salt", default=None,
                        help="pseudonymisation salt for series names in storage and logs (default: as predict)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")


def run(args: argparse.Namespace) -> int:
    from ..inference.model import resolve_device
    from ..node.sender import Destination
    from ..node.server import Node, NodeSettings, configure_logging
    from ..node.worker import TrainedModel

    destination = Destination.parse(args.destination)
    storage = Path(args.storage)
    if storage.exists() and not storage.is_dir():
        raise DSAInputError(f"{storage}: exists and is not a folder (--storage).")
    storage.mkdir(parents=True, exist_ok=True)
    configure_logging(storage)
    model = TrainedModel.load(args.config_file, args.weights, resolve_device(args.device), args.operating_point,
                              args.threshold, args.batch_size, args.opts)
    settings = NodeSettings(
        ae_title=args.ae_title, port=args.port, bind=args.bind, destination=destination, storage=storage,
        allow=args.allow, quiet_s=args.quiet_s, gsps=args.gsps, salt=args.salt, queue_size=args.queue_size,
        retry_max_s=args.retry_max_s,
    )
    Node(settings, model).serve_forever()
    return 0
