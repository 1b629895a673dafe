"""Deployable exports: ONNX graphs of a trained model, their record, and series inference through them.

:func:`export_model` (the ``export`` command) writes ``backbone.onnx``, ``head.onnx`` (R-CNN: also
the RPN head, box pooler and per-stage box head graphs) and ``export.json``;
:class:`OnnxSeriesPredictor` runs a series through them with onnxruntime (``predict --runtime
onnxruntime``) after :func:`read_export` checked them.
"""

from .onnx_export import CHECK_TOLERANCE, EXPORTERS, export_model
from .runtime import OnnxSeriesPredictor, onnx_series_predictor, read_export, require_onnxruntime

__all__ = [
    "CHECK_TOLERANCE", "EXPORTERS", "OnnxSeriesPredictor", "export_model", "onnx_series_predictor", "read_export",
    "require_onnxruntime",
]
