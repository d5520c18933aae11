"""Micro-batching: requests from many clients share one forward pass of the model.

Handlers ``submit`` single items and await a future; one worker thread takes the first
waiting item, keeps collecting until it holds ``max_batch`` items or ``max_wait_ms`` have
passed, then runs the model once per group of items that share decoding options (a
batch must share its decoding options) and resolves every future. Throughput
grows with the number of concurrent clients at the price of at most ``max_wait_ms`` of
extra latency; ``max_batch=1`` turns batching off (each item runs alone, no waiting).
The model is only ever touched by the worker thread, so it needs no lock.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Hashable, NamedTuple, Sequence

from ..errors import InvalidInputError

# ``run(items, key) -> results``: one result per item, in order.
RunBatch = Callable[[Sequence[Any], Hashable], Sequence[Any]]


class QueueFullError(RuntimeError):
    """More items are waiting than ``max_queue``; the caller should answer 503."""


class _Item(NamedTuple):
    payload: Any
    key: Hashable
    future: Future


_STOP = object()


class MicroBatcher:
    def __init__(self, run: RunBatch, max_batch: int = 16, max_wait_ms: float = 5.0, max_queue: int = 1024):
        if max_batch < 1:
            raise InvalidInputError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_ms < 0:
            raise InvalidInputError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run = run
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # statistics, read by tests and the benchmark
        self.items_run = 0

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> "MicroBatcher":
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._work, name="captioner-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the items already queued, then end the worker."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # --- submitting -----------------------------------------------------------------
    def submit(self, payload: Any, key: Hashable = None) -> Future:
        """Queue one item; its future resolves to ``run([..., payload, ...], key)``'s result."""
        if not self.running:
            raise RuntimeError("the batcher is not running")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFullError(f"server busy: {self.max_queue} images are already waiting")
        future: Future = Future()
        self._queue.put(_Item(payload, key, future))
        return future

    async def run_many(self, payloads: Sequence[Any], key: Hashable = None) -> list:
        """Submit several items (one request's images) and await all their results."""
        futures = [self.submit(p, key) for p in payloads]
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    # --- the worker -----------------------------------------------------------------
    def _collect(self, first: _Item) -> tuple[list[_Item], bool]:
        """The first item plus whatever arrives before the batch is full or the wait is over."""
        items = [first]
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch:
            try:
                # Take what is already queued without waiting; only then wait for more.
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                return items, True
            items.append(item)
        return items, False

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            items, stopping = self._collect(first)
            groups: dict[Hashable, list[_Item]] = {}
            for item in items:
                groups.setdefault(item.key, []).append(item)
            for key, group in groups.items():
                self._run_group(key, group)
        # Anything submitted after the stop marker is failed, never left hanging.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and not item.future.done():
                item.future.set_exception(RuntimeError("the server is shutting down"))

    def _run_group(self, key: Hashable, group: list[_Item]) -> None:
        live = [item for item in group if item.future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.run([item.payload for item in live], key)
            if len(results) != len(live):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
        except BaseException as e:  # one failing batch must not kill the worker
            for item in live:
                item.future.set_exception(e)
            return
        self.batches_run += 1
        self.items_run += len(live)
        for item, result in zip(live, results):
            item.future.set_result(result)
