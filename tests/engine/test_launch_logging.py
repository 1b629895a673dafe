"""In-process training runs leave logging as they found it (the suite passes in any order).

Detectron2's ``setup_logger`` (called by ``default_setup``) binds a handler to the ``sys.stdout`` of
the moment and is cached; after ``train_net.main`` returned inside one test, a later test's log
calls wrote to a closed capture stream and printed logging tracebacks into its stderr.
"""

from __future__ import annotations

import logging
import sys

from detectron2.utils.logger import setup_logger

from perforation_d2.engine.launch import restored_logging


def test_handlers_and_levels_set_up_inside_are_removed_and_log_files_closed(tmp_path):
    logger = logging.getLogger("detectron2")
    before = (list(logger.handlers), logger.level, logger.propagate)
    for _ in range(2):  # a second in-process run sets logging up afresh (the cache was cleared)
        with restored_logging():
            setup_logger(str(tmp_path), name="detectron2")
            added = [h for h in logger.handlers if h not in before[0]]
            assert len(added) == 2  # stdout + OUTPUT_DIR/log.txt
            log_file = next(h.stream for h in added if h.stream is not sys.stdout)
            logger.info("inside the run")
        assert (list(logger.handlers), logger.level, logger.propagate) == before
        assert log_file.closed
    assert "inside the run" in (tmp_path / "log.txt").read_text()
    logger.warning("after the run: no handler of the run is left to fail")
