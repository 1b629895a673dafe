"""Predicting new series with a trained model (the library of the ``predict`` command).

``sources`` finds the series of an input (cohort JSON, DICOM file or folder), ``model`` loads the
trained model and its decision threshold, ``result`` decides each series and writes the outputs,
``archive`` runs the series on one process or sharded over ``launch`` workers, and ``progress``
keeps finished series for ``--resume``.
"""
