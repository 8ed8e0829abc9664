"""Overlapping work with a thread: an iterator produced ``depth`` items ahead in the background.

A training rank gathers its next batches while the device computes (``train.feeding``); a
scoring task reads its next Arrow batches while it scores, and scores while it writes
(``scoring.task``). pyarrow and torch release the GIL in their heavy parts, so the threads run
at the same time.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def background(items: Iterable[T], depth: int = 2, transform: Callable[[T], T] | None = None,
               name: str = "photoz-background") -> Iterator[T]:
    """``items`` (each passed through ``transform``), produced by a thread up to ``depth`` ahead.

    Same items, same order. An error in the thread is raised here, at the item where it
    happened; closing the returned iterator (or dropping it) stops the thread and waits for it.

    Args:
        items: what the thread iterates (an iterator it consumes, or an iterable).
        depth: items produced ahead of the consumer (the memory held).
        transform: applied in the thread (e.g. pinning a batch's memory).
        name: the thread's name.

    Returns:
        A generator of the items.
    """
    done, stop = object(), threading.Event()
    slots: queue.Queue = queue.Queue(maxsize=max(1, depth))

    def put(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce():
        try:
            for item in items:
                if not put(transform(item) if transform is not None else item):
                    return
            put(done)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            put(err)

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()

    def consume():
        try:
            while True:
                item = slots.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            thread.join()

    return consume()
