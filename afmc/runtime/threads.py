"""Work on all cores, consumed in order: the thread pool that chip programming runs on."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def in_order_on_threads(function: Callable[[Item], Result], items: Iterable[Item],
                        ahead: int) -> Iterator[Result]:
    """function(item) for each item, in the items' order, computed on a pool of one
    thread per core at most `ahead` items ahead of the consumer (so at most ahead + 1
    results are alive at once). The threads run in parallel where `function` releases
    the GIL (numpy, ctypes, torch)."""
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        pending: deque[Future[Result]] = deque()
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
