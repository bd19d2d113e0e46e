"""uvicorn's httptools protocol (its fastest HTTP/1.1 parser), with a deadline for the request head.

uvicorn times out neither a connection that never sends a byte nor one that sends its request head a byte at a time:
its keep-alive timeout is lifted at the first byte. Here a connection that has not sent a whole request head within
`head_timeout` seconds of opening, or of its last response, is closed; a request being answered is never cut.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeadDeadlineProtocol(HttpToolsProtocol):
    head_timeout: float  # set by with_head_deadline

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.head_timer: asyncio.TimerHandle | None = None
        self._await_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
        waiting_after = self.cycle  # a new request head makes a new cycle

        def expire() -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if self.cycle is waiting_after and idle and not self.transport.is_closing():
                self.transport.close()

        self.head_timer = self.loop.call_later(self.head_timeout, expire)


def with_head_deadline(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class uvicorn's Config takes as `http`, closing connections without a whole head within seconds."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": seconds})
