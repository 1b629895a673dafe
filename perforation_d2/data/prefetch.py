"""Loading the next series in a background thread while the current one is predicted.

Evaluation (:func:`~perforation_d2.evaluation.inference.iterate_series_predictions`) and
``predict`` (:mod:`perforation_d2.inference.archive`) read each series (PNG or DICOM decoding,
then :meth:`~perforation_d2.modeling.series_inference.SeriesPredictor.prepare`: the resize to the
model's input, into pinned memory when the model is on CUDA) and predict it. :class:`Prefetch`
overlaps the two: while the consumer works on series k, one daemon thread loads series k+1.

The contract, for ``with Prefetch(items, load, depth) as loaded: for item, value in loaded: ...``:

- the same ``(item, load(item))`` pairs in the same order as loading in the consumer's thread
  (``depth=0`` does exactly that: the sequential path, no thread);
- at most ``depth`` items are loaded ahead (waiting for the consumer, or being loaded), so with
  the default depth 1 memory holds the consumer's series and the next one;
- an exception raised by ``load(item)`` (a bad file: ``DSAInputError`` naming it) is raised again,
  the same object, when the consumer asks for that item, after every item before it; nothing
  after it is loaded;
- leaving the ``with`` block (the end, an early ``break``, an exception, a closed generator around
  it) stops the thread and joins it, so no thread outlives the block: a load in progress is
  waited for. Only on ``KeyboardInterrupt`` the block does not wait, so Ctrl-C is as prompt as
  without the thread: the daemon thread finishes the load it is in, sees the stop and ends.

``load`` runs in the background thread: it must not depend on thread-local state (``torch.no_grad``,
autocast: prediction stays in the consumer's thread) nor race with the consumer on shared state.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

__all__ = ["THREAD_NAME", "Prefetch"]

T = TypeVar("T")
R = TypeVar("R")

_DONE = object()  # the thread loaded every item
THREAD_NAME = "perforation_d2-prefetch"  # of the loading thread, to find it in threading.enumerate()


class Prefetch(Generic[T, R]):
    """``load`` each of ``items`` up to ``depth`` items ahead of the consumer, in a background thread."""

    def __init__(self, items: Iterable[T], load: Callable[[T], R], depth: int = 1):
        if depth < 0:
            raise ValueError(f"depth must be >= 0, not {depth}")
        self.items, self.load, self.depth = items, load, int(depth)
        self.thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._slots = threading.Semaphore(self.depth)  # one per item loaded ahead of the consumer
        self._ready: queue.SimpleQueue = queue.SimpleQueue()

    def __enter__(self) -> Iterator[tuple[T, R]]:
        if self.thread is not None:
            raise RuntimeError("a Prefetch runs once")
        if self.depth == 0:
            return ((item, self.load(item)) for item in self.items)
        self.thread = threading.Thread(target=self._produce, name=THREAD_NAME, daemon=True)
        self.thread.start()
        return self._consume()

    def __exit__(self, exc_type, exc, traceback) -> None:
        self.close(wait=exc_type is None or not issubclass(exc_type, KeyboardInterrupt))

    def close(self, wait: bool = True) -> None:
        """Stop loading; with ``wait``, return once the thread has ended (after a load in progress)."""
        self._stop.set()
        self._slots.release()  # wakes the thread if it waits for a slot
        if wait and self.thread is not None:
            self.thread.join()

    def _produce(self) -> None:
        try:
            for item in self.items:
                self._slots.acquire()
                if self._stop.is_set():
                    return
                self._ready.put((item, self.load(item), None))
        except BaseException as error:  # raised in the consumer, at this item's place
            self._ready.put((None, None, error))
            return
        self._ready.put(_DONE)

    def _consume(self) -> Iterator[tuple[T, R]]:
        while True:
            entry = self._ready.get()
            if entry is _DONE:
                return
            item, value, error = entry
            if error is not None:
                raise error
            self._slots.release()  # this item left the queue: the thread may load the next one
            yield item, value
            entry = item = value = None  # hold nothing of the consumer's item while waiting for the next
