"""A DICOM node (``serve``): receives XA/XRF series, predicts each once complete, sends DICOM results.

:mod:`.scp` listens (C-ECHO, C-STORE, series completeness), :mod:`.store` keeps received
instances, the pseudonymous series index and the result outbox on disk, :mod:`.worker` runs the
model (one thread, bounded queue), :mod:`.sender` delivers results with retries, and
:mod:`.server` ties them together and resumes after a restart.
"""
