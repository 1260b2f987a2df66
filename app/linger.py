"""A lingering close, like nginx's: the response goes out, the write side is shut down, and what the client
still sends is read and dropped until it closes, is quiet for LINGER_QUIET_S, or LINGER_S has passed. A
plain close while the client is still sending makes the kernel reset the connection, often before the client
has read the response (docs/security.md#connections)."""

from __future__ import annotations

import asyncio

LINGER_S = 10.0  # the longest a lingering close reads and discards (nginx: lingering_time, 30 s)
LINGER_QUIET_S = 2.0  # ... ending sooner once the client has sent nothing this long (lingering_timeout, 5 s)


class LingeringClose:
    """One connection's lingering close; `active` from begin() until the connection ends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport) -> None:
        self._loop = loop
        self._transport = transport
        self._timer: asyncio.TimerHandle | None = None
        self._end = self._last_read = 0.0
        self.active = False

    def begin(self) -> None:
        self.active = True
        if self._transport.is_closing() or not self._transport.can_write_eof():
            self._transport.close()
            return
        now = self._loop.time()
        self._end, self._last_read = now + LINGER_S, now
        self._transport.write_eof()  # FIN once the response is out; reading goes on (and is dropped)
        self._transport.resume_reading()
        self._timer = self._loop.call_later(LINGER_QUIET_S, self._check)

    def received(self) -> None:
        """The client sent something, which is dropped: it is not quiet yet."""
        self._last_read = self._loop.time()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        due = min(self._end, self._last_read + LINGER_QUIET_S)
        now = self._loop.time()
        if now >= due:
            self._timer = None
            self._transport.close()
        else:
            self._timer = self._loop.call_later(due - now, self._check)
