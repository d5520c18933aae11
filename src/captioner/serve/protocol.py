"""Read timeouts for the HTTP server, at the protocol level where uvicorn has none.

uvicorn closes idle keep-alive connections but never times out a request that arrives
slowly: a client that sends its headers a byte at a time (slowloris) or a body that never
ends holds a connection, a task and memory for as long as it likes. ``timed_protocol``
subclasses uvicorn's h11 protocol with two deadlines per request: the headers must arrive
in full within ``header_timeout`` seconds of the connection (or of the previous response),
the body within ``body_timeout`` seconds of the headers. A request past its deadline is
closed (408 while no response has started).
"""
from __future__ import annotations

import asyncio

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body read deadlines (class attributes, set by
    :func:`timed_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "headers" or "body" while a request is being read
        super().connection_made(transport)
        self._watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()  # keep-alive: the next request's headers are on the clock again

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_deadline(None, None)
        super().connection_lost(exc)

    def _watch(self) -> None:
        """Start or stop the deadline that fits what the client still has to send."""
        state = self.conn.their_state
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            self._set_deadline("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            self._set_deadline("body", self.body_timeout)
        else:  # the request is in (DONE), or the connection is closing
            self._set_deadline(None, None)

    def _set_deadline(self, phase: str | None, seconds: float | None) -> None:
        if phase == self._phase:
            return  # the deadline of this phase keeps running: it is a total, not an idle timer
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase = phase
        if phase is not None:
            self._deadline = self.loop.call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._phase == "headers":
            self.transport.write(TIMEOUT_RESPONSE)
        self.logger.info("closed a connection whose request %s did not arrive in time", self._phase)
        self.transport.close()


def timed_protocol(header_timeout: float, body_timeout: float) -> type[TimedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these read deadlines (seconds)."""
    if header_timeout <= 0 or body_timeout <= 0:
        from ..errors import InvalidInputError

        raise InvalidInputError(
            f"header and body timeouts must be positive seconds, got {header_timeout} and {body_timeout}"
        )
    return type("TimedH11Protocol", (TimedH11Protocol,), {"header_timeout": header_timeout,
                                                          "body_timeout": body_timeout})
