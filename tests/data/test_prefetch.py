"""``data.prefetch.Prefetch``: the sequential path's items in its order, errors at their item, a
bounded look-ahead, real overlap, and no thread left behind (end, break, error, closed generator,
Ctrl-C). Timings use sleeps of 0.2 s and wide margins: the machine is shared."""

from __future__ import annotations

import threading
import time

import pytest
from helpers.threads import prefetch_threads

from perforation_d2.data.prefetch import Prefetch
from perforation_d2.errors import DSAInputError


@pytest.fixture(autouse=True)
def _no_thread_left():
    assert not prefetch_threads()
    yield
    assert not prefetch_threads(), "a prefetch thread outlived its block"


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_same_items_and_values_in_the_same_order(depth):
    with Prefetch(range(7), lambda i: i * i, depth) as loaded:
        assert list(loaded) == [(i, i * i) for i in range(7)]


def test_depth_zero_loads_in_the_consumers_thread_and_negative_is_refused():
    threads = []
    with Prefetch([1, 2], lambda i: threads.append(threading.current_thread()), 0) as loaded:
        list(loaded)
    assert threads == [threading.main_thread()] * 2
    with pytest.raises(ValueError, match="depth"):
        Prefetch([1], str, -1)


@pytest.mark.parametrize("depth", [0, 1])
def test_a_load_error_is_raised_at_its_item_with_its_message(depth):
    loaded_items = []

    def load(i: int) -> int:
        loaded_items.append(i)
        if i == 2:
            raise DSAInputError(f"/data/frames/v{i}/000.png: is not a readable image (a cohort frame must be a PNG file).")
        return i

    received = []
    with pytest.raises(DSAInputError) as caught:
        with Prefetch(range(6), load, depth) as loaded:
            for item, _value in loaded:
                received.append(item)
                time.sleep(0.05)  # the thread runs ahead to the failing item
    assert received == [0, 1]
    assert str(caught.value) == "/data/frames/v2/000.png: is not a readable image (a cohort frame must be a PNG file)."
    assert loaded_items == [0, 1, 2]  # nothing after the failing item is loaded


@pytest.mark.parametrize("depth", [1, 2])
def test_look_ahead_is_bounded_by_the_depth(depth):
    started = []
    beyond = []  # loads begun past the consumer's item, seen while it works on that item

    def load(i: int) -> int:
        started.append(i)
        return i

    with Prefetch(range(8), load, depth) as loaded:
        for item, _value in loaded:
            time.sleep(0.05)
            beyond.append(len(started) - 1 - item)
    assert max(beyond) == depth, beyond  # it runs ahead, never further than the depth


def test_early_stop_and_a_closed_generator_leave_no_thread():
    with Prefetch(range(100), lambda i: time.sleep(0.01) or i) as loaded:
        for item, _value in loaded:
            if item == 2:
                break
    assert not prefetch_threads()

    def consumer():
        with Prefetch(range(100), lambda i: i) as loaded:
            yield from loaded

    generator = consumer()
    assert next(generator) == (0, 0)
    assert prefetch_threads()
    generator.close()
    assert not prefetch_threads()


def test_an_error_in_the_consumer_stops_and_joins_the_thread():
    with pytest.raises(RuntimeError, match="consumer"):
        with Prefetch(range(100), lambda i: time.sleep(0.05) or i) as loaded:
            for _ in loaded:
                raise RuntimeError("consumer failed")
    assert not prefetch_threads()


def test_ctrl_c_does_not_wait_for_the_load_in_progress():
    started = threading.Event()

    def load(i: int) -> int:
        if i == 1:
            started.set()
            time.sleep(1.0)
        return i

    begin = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        with Prefetch(range(5), load) as loaded:
            for _ in loaded:
                assert started.wait(5)
                raise KeyboardInterrupt
    assert time.perf_counter() - begin < 0.9  # not after the 1 s load
    for thread in prefetch_threads():  # the daemon thread ends by itself after that load
        thread.join(10)
    assert not prefetch_threads()


def test_loading_overlaps_the_consumers_work():
    """5 items, 0.2 s to load and 0.2 s to process each: 2 s one after the other, about 1.2 s overlapped."""
    spent = {"load": 0.0, "work": 0.0}

    def load(i: int) -> int:
        start = time.perf_counter()
        time.sleep(0.2)
        spent["load"] += time.perf_counter() - start
        return i

    begin = time.perf_counter()
    with Prefetch(range(5), load) as loaded:
        for _ in loaded:
            start = time.perf_counter()
            time.sleep(0.2)
            spent["work"] += time.perf_counter() - start
    total = time.perf_counter() - begin
    assert total < 0.85 * (spent["load"] + spent["work"]), (total, spent)
