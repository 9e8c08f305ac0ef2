"""Lanes: many photos on Linux shared out over forked worker processes, one per core.

Each lane runs the predictor's pipeline on whole batches, on one thread, with no
decoding thread (``_Inline``): the machine's cores each run one stream of work, and no
two threads of one process take turns at its lock. Results come back in input order.
A lane that dies loses nothing: the batches it held, and the rest of the input, run in
the calling process instead.
"""

from __future__ import annotations

import itertools
import multiprocessing
import signal
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from tinytriage.inference.inputs import PhotoFailure

if TYPE_CHECKING:
    from tinytriage.inference.predict import Prediction, Predictor


def run_in_lanes(
    predictor: Predictor, paths: Iterator[str | PhotoFailure], batch_size: int, workers: int
) -> Iterator[Prediction | PhotoFailure]:
    """Each batch to the next free lane, results in input order. A lane runs
    ``_pipeline`` with no threads of its own, so the machine's cores each run one
    stream of work (no two threads of one process taking turns at its lock). Should
    a lane die (killed, or a decoder crashing), the batches it held and all after
    them run here instead: nothing is lost."""
    sys.stdout.flush()  # a forked child flushes its copy of these buffers when it exits
    sys.stderr.flush()
    # a forked lane inherits its initializer's arguments: nothing is pickled but paths and results
    lanes = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("fork"),
        initializer=_lane_start,
        initargs=(predictor, batch_size),
    )
    flying: deque[tuple[list, Future]] = deque()  # (batch, its results), in input order
    batches = itertools.chain(_batches(paths, batch_size), [None])  # None: the input has ended
    lost: list[list] = []  # the batches the lanes held when one died
    try:
        for batch in batches:
            if batch is not None:
                try:
                    flying.append((batch, lanes.submit(_lane_run, batch)))
                except BrokenProcessPool:  # a lane died before its results were asked for
                    lost = [*(b for b, _ in flying), batch]
                    break
            # hand on the front batch once it is done, or when too many are in flight, or at the end
            while flying and (batch is None or flying[0][1].done() or len(flying) > 2 * workers):
                front, done = flying.popleft()
                try:
                    yield from done.result()
                except BrokenProcessPool:
                    lost = [front, *(b for b, _ in flying)]
                    break
            if lost:
                break
    finally:
        lanes.shutdown(wait=True, cancel_futures=True)
    if lost:  # the rest runs here: what the lanes held, then the input not yet read
        rest = itertools.chain.from_iterable(itertools.chain(lost, (b for b in batches if b is not None)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            yield from predictor._pipeline(rest, batch_size, pool)


class _Inline:
    """An executor that runs each task at once, on the calling thread (a lane's)."""

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        done.set_result(fn(*args))
        return done

    def map(self, fn, items):
        return map(fn, items)


_LANE: tuple[Predictor, int] | None = None  # (predictor, batch size), in a lane only


def _lane_start(predictor: Predictor, batch_size: int) -> None:
    """In a new lane: what it predicts with, one thread (the cores are shared out by
    lanes), and Ctrl-C is the parent's to handle (it stops the lanes). The parent keeps no
    global of its own, so two folders in lanes at once (two threads) never mix."""
    from tinytriage import nn

    global _LANE
    _LANE = (predictor, batch_size)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    nn.set_num_threads(1)


def _lane_run(batch: list[str | PhotoFailure]) -> list[Prediction | PhotoFailure]:
    predictor, batch_size = _LANE
    return list(predictor._pipeline(batch, batch_size, _Inline()))


def _batches(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch
