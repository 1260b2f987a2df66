"""Grammar checks with a budget: each runs in a child process (tools/check_worker.py) that is killed when the
request's time budget is spent or its client has gone, under a memory cap set by the kernel.

A few idle children are kept, so a check costs a pipe round trip, not a process start. Children are started
and waited for from the request's own thread (the tools stage runs off the event loop).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lodestar.grammar")

ROOT = Path(__file__).resolve().parent.parent
_POLL_S = 0.05  # how often a wait looks at its request's cancellation
_VERDICTS = 512  # llguidance's verdicts kept by grammar hash: agents send the same tools with every request


class GrammarTooComplex(Exception):
    """The check did not finish within the time budget or the memory cap (or its client left)."""


class GrammarBusy(Exception):
    """Every checking process stayed busy for the whole budget: the server is overloaded, not the schema."""


@dataclass(frozen=True, slots=True)
class GrammarBudget:
    time_s: float = 2.0  # all grammar checks of one request
    memory_bytes: int = 512 << 20  # address space of one checking process
    workers: int = 2  # checking processes at once; more checks wait for one


class Deadline:
    """One request's budget: the time left, and whether its client has gone."""

    def __init__(self, seconds: float, cancelled: threading.Event | None = None) -> None:
        self.ends = time.monotonic() + seconds
        self.seconds = seconds
        self.cancelled = cancelled or threading.Event()

    def left(self) -> float:
        return self.ends - time.monotonic()

    def spent(self) -> bool:
        return self.cancelled.is_set() or self.left() <= 0


class GrammarChecker:
    def __init__(self, budget: GrammarBudget | None = None) -> None:
        self.budget = budget or GrammarBudget()
        self._slots = threading.BoundedSemaphore(self.budget.workers)
        self._idle: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self._closed = False
        self._verdicts: OrderedDict[str, tuple[bool, list[str]]] = OrderedDict()
        self.checks = 0
        self.refused = 0  # checks stopped for time, memory or a client that left

    def deadline(self, cancelled: threading.Event | None = None) -> Deadline:
        return Deadline(self.budget.time_s, cancelled)

    def validate(self, grammar: str, deadline: Deadline) -> tuple[bool, list[str]]:
        """llguidance's verdict on `grammar` (is_error, messages); GrammarTooComplex if the budget runs out."""
        key = hashlib.sha256(grammar.encode()).hexdigest()
        with self._lock:
            verdict = self._verdicts.get(key)
            if verdict is not None:
                self._verdicts.move_to_end(key)
                return verdict
        verdict = self._validate(grammar, deadline)
        with self._lock:
            self._verdicts[key] = verdict
            if len(self._verdicts) > _VERDICTS:
                self._verdicts.popitem(last=False)
        return verdict

    def _validate(self, grammar: str, deadline: Deadline) -> tuple[bool, list[str]]:
        while not self._slots.acquire(timeout=_POLL_S):
            if deadline.spent():
                raise GrammarBusy(f"every grammar checker stayed busy for {deadline.seconds:g} s")
        try:
            child = self._take()
            try:
                verdict = self._ask(child, grammar, deadline)
            except BaseException:
                _kill(child)
                raise
            self._give_back(child)
            self.checks += 1
            return verdict
        finally:
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for child in idle:
            _kill(child)

    def _too_complex(self, deadline: Deadline, doing: str) -> GrammarTooComplex:
        self.refused += 1
        if deadline.cancelled.is_set():
            return GrammarTooComplex("the client went away")
        return GrammarTooComplex(f"{doing} took longer than the grammar budget ({deadline.seconds:g} s)")

    def _take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            while self._idle:
                child = self._idle.pop()
                if child.poll() is None:
                    return child
        return subprocess.Popen([sys.executable, "-m", "tools.check_worker", str(self.budget.memory_bytes)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                cwd=ROOT, close_fds=True)

    def _give_back(self, child: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.budget.workers:
                self._idle.append(child)
                return
        _kill(child)

    def _ask(self, child: subprocess.Popen[bytes], grammar: str, deadline: Deadline) -> tuple[bool, list[str]]:
        assert child.stdin is not None and child.stdout is not None
        try:
            child.stdin.write(json.dumps(grammar).encode() + b"\n")
            child.stdin.flush()
        except BrokenPipeError:  # an idle child that died; the caller kills it and the check is refused
            raise GrammarTooComplex("the grammar checker stopped") from None
        out = child.stdout.fileno()
        reply = b""
        while not reply.endswith(b"\n"):
            if deadline.spent():
                raise self._too_complex(deadline, "checking the grammar")
            ready, _, _ = select.select([out], [], [], min(_POLL_S, max(deadline.left(), 0)))
            if ready:
                chunk = os.read(out, 1 << 16)
                if not chunk:  # the child died: past its memory cap (llguidance aborts when allocation fails)
                    self.refused += 1
                    raise GrammarTooComplex(
                        f"checking the grammar needed more than {self.budget.memory_bytes >> 20} MiB")
                reply += chunk
        is_error, messages = json.loads(reply)
        return bool(is_error), [str(m) for m in messages]


def _kill(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait()
    for pipe in (child.stdin, child.stdout):
        if pipe is not None:
            pipe.close()
