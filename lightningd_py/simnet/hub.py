"""Fan-out of stream updates to gRPC subscribers, with a clean end-of-stream for restarts.

Each subscriber owns a bounded queue. LND itself buffers per subscriber without limit; simnet
bounds the buffer generously and ends a subscriber that falls that far behind, so a stuck test
client cannot grow simnet's memory without bound.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Generic, TypeVar

__all__ = ["END", "Hub", "SubscriberOverflow", "Subscription"]

T = TypeVar("T")
END = object()
MAX_BUFFER = 2_000_000


class SubscriberOverflow(Exception):
    """A subscriber fell more than MAX_BUFFER updates behind."""


class Subscription(Generic[T]):
    def __init__(self, hub: Hub[T], maxsize: int) -> None:
        self._hub = hub
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize)
        self.overflowed = False

    def push(self, item: object) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            # Make room for the terminator so the reader wakes up and ends the stream.
            while not self.queue.empty():
                self.queue.get_nowait()
                self.queue.task_done()
            self.queue.put_nowait(END)

    async def __aiter__(self) -> AsyncIterator[T]:
        try:
            while True:
                item = await self.queue.get()
                self.queue.task_done()
                if item is END:
                    if self.overflowed:
                        raise SubscriberOverflow("subscriber fell too far behind")
                    return
                yield item  # type: ignore[misc]
        finally:
            self.close()

    def close(self) -> None:
        self._hub.remove(self)
        # Drop what was never read, so nobody waits on queue.join() for a gone reader.
        while not self.queue.empty():
            self.queue.get_nowait()
            self.queue.task_done()


class Hub(Generic[T]):
    """Broadcast updates to every current subscriber."""

    def __init__(self, maxsize: int = MAX_BUFFER) -> None:
        self._subs: list[Subscription[T]] = []
        self._maxsize = maxsize

    def subscribe(self) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self, self._maxsize)
        self._subs.append(sub)
        return sub

    def remove(self, sub: Subscription[T]) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def publish(self, item: T) -> None:
        for sub in self._subs:
            sub.push(item)

    def publish_lazy(self, make: Callable[[], T]) -> None:
        """Publish `make()` only when somebody listens (serialization is not free)."""
        if self._subs:
            self.publish(make())

    def __len__(self) -> int:
        return len(self._subs)

    async def wait_drained(self, limit: float) -> bool:
        """Wait until every current subscriber took everything queued; False on timeout."""
        try:
            async with asyncio.timeout(limit):
                await asyncio.gather(*(sub.queue.join() for sub in list(self._subs)))
        except TimeoutError:
            return False
        return True

    def end_all(self) -> None:
        """End every subscriber's stream cleanly (what LND does on shutdown)."""
        for sub in list(self._subs):
            sub.push(END)
        self._subs.clear()
