"""Many front processes sharing one state (issue 22), end to end with the openai SDK in front of stand-in
SGLang workers: two Lodestar instances on one throwaway PostgreSQL, and one Lodestar with --workers 2 on
its SQLite file. Either way a session moves between processes with exact-token continuation and its cache,
runs one request at a time, a key's concurrency limit counts every process's requests, and the usage totals
add up to what the clients were told."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import ServerProcess, start_server
from tests.postgres import Postgres, new_database
from tests.sglang.conftest import serve_workers
from tests.sglang.standin import StandIn

KEY, USAGE_KEY, ADMIN = "sk-scale-0001", "sk-usage-0003", "adm-scale-0002"
FLAGS = ("--api-key", KEY, "--api-key", USAGE_KEY, "--admin-key", ADMIN, "--max-concurrent-per-key", "2",
         "--session-busy-timeout-s", "0.3", "--log-format", "json")


@dataclass
class Front:
    """The processes in front of the workers, as clients see them: request i goes to urls[i % 2]."""

    servers: list[ServerProcess]
    urls: list[str]
    workers: list[StandIn]

    def client(self, i: int, key: str = KEY) -> openai.OpenAI:
        # A new connection per client: with --workers 2 the kernel hands each to either process.
        return openai.OpenAI(base_url=f"{self.urls[i % len(self.urls)]}/v1", api_key=key, max_retries=0,
                             timeout=60, http_client=httpx.Client(timeout=60))

    def pid_of(self, request_id: str) -> int:
        """The process that served a request, from its JSON access line (written once the response is)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for server in self.servers:
                for line in server.log().splitlines():
                    if line.startswith("{") and request_id in line and '"lodestar.access"' in line:
                        return json.loads(line)["pid"]
            time.sleep(0.05)
        raise AssertionError(f"no access line for {request_id}")

    def paced(self, seconds: float) -> None:
        for worker in self.workers:
            worker.faults.pace_s = seconds


def _standins(engine: Any) -> list[StandIn]:
    return [StandIn(engine, name="a", deterministic=True), StandIn(engine, name="b", incremental=True,
                                                                   deterministic=True)]


def _sglang_flags(urls: list[str]) -> list[str]:
    return ["--engine", "sglang", *(a for url in urls for a in ("--sglang-url", url)), "--model", "smollm2",
            "--sglang-read-timeout-s", "20", "--sglang-health-interval-s", "1"]


@pytest.fixture(scope="module")
def two_instances(tmp_path_factory: pytest.TempPathFactory, smollm2_engine: Any,
                  postgres: Postgres) -> Iterator[Front]:
    """Two Lodestar instances (two ports, as if on two hosts) on one PostgreSQL."""
    workers = _standins(smollm2_engine)
    urls, threads = serve_workers(*workers)
    store = new_database(postgres)
    tmp = tmp_path_factory.mktemp("pair")
    servers = []
    try:
        for _ in range(2):
            servers.append(start_server(tmp, *_sglang_flags(urls), *FLAGS, "--store", store, timeout=120))
        yield Front(servers, [s.base_url for s in servers], workers)
    finally:
        for server in servers:
            server.stop()
        for thread in threads:
            thread.should_exit = True


@pytest.fixture(scope="module")
def two_workers_one_port(tmp_path_factory: pytest.TempPathFactory, smollm2_engine: Any) -> Iterator[Front]:
    """One Lodestar of two processes (--workers 2) on its SQLite file."""
    workers = _standins(smollm2_engine)
    urls, threads = serve_workers(*workers)
    tmp = tmp_path_factory.mktemp("workers")
    server = start_server(tmp, *_sglang_flags(urls), *FLAGS, "--workers", "2", timeout=120)
    deadline = time.monotonic() + 60
    while server.log().count("Application startup complete") < 2:  # a process listens once it can serve
        assert time.monotonic() < deadline, server.log()[-3000:]
        time.sleep(0.2)
    try:
        yield Front([server], [server.base_url], workers)
    finally:
        server.stop()
        for thread in threads:
            thread.should_exit = True


@pytest.fixture(params=["two_instances_postgresql", "workers_2_sqlite"])
def front(request: pytest.FixtureRequest) -> Front:
    name = "two_instances" if request.param == "two_instances_postgresql" else "two_workers_one_port"
    front: Front = request.getfixturevalue(name)
    front.paced(0)
    return front


def ask(front: Front, i: int, session: str, text: str, max_tokens: int = 8) -> Any:
    return front.client(i).chat.completions.with_raw_response.create(
        model="smollm2", messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0,
        extra_headers={"X-Session-ID": session})


def test_a_session_moves_between_processes_with_exact_tokens_and_its_cache(front: Front) -> None:
    session = f"move-{front.urls[-1][-5:]}"
    served_by, turns = set(), []
    for i in range(12):  # --workers 2: until the kernel has handed turns to both processes
        raw = ask(front, i, session, f"Tell me one fact about the number {i}.")
        served_by.add(front.pid_of(raw.headers["x-request-id"]))
        turns.append(raw.parse())
        if len(served_by) == 2 and i >= 2:
            break
    assert len(served_by) == 2, "every turn was served by one process"
    mine = [r.input_ids for w in front.workers for r, h in zip(w.requests, w.headers, strict=True)
            if h.get("x-smg-routing-key", "").endswith(f":{session}")]  # one worker's, in arrival order
    assert len(mine) == len(turns)
    for earlier, later in zip(turns, turns[1:], strict=False):
        assert later.usage.prompt_tokens_details.cached_tokens >= earlier.usage.prompt_tokens  # the worker's cache
    for before, after in zip(mine, mine[1:], strict=False):
        assert after[:len(before)] == before  # each turn's prompt extends the last one, token for token
    stored = httpx.get(f"{front.urls[0]}/v1/sessions/{session}", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert stored["turns"] == len(turns)


def test_one_session_through_two_processes_at_once_is_one_200_and_one_409(front: Front) -> None:
    front.paced(0.15)
    results: list[Any] = [None, None]

    def call(i: int) -> None:
        try:
            results[i] = ask(front, i, "busy-one", "Count slowly from one to ten.", max_tokens=12).status_code
        except openai.APIStatusError as exc:
            results[i] = (exc.status_code, exc.body.get("code") if isinstance(exc.body, dict) else None)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(60)
    assert sorted(results, key=str) == [(409, "session_busy"), 200]


def test_a_key_s_third_concurrent_request_is_429_whichever_process_it_reaches(front: Front) -> None:
    front.paced(0.15)
    streams = [front.client(i).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long poem about the sea."}],
        max_tokens=40, stream=True) for i in range(2)]
    try:
        for stream in streams:
            next(iter(stream))  # both admitted and running
        for i in range(2):
            with pytest.raises(openai.RateLimitError) as refused:
                ask(front, i, f"third-{i}", "hi")
            assert refused.value.body["code"] == "concurrency_limit_exceeded"  # type: ignore[index]
    finally:
        for stream in streams:
            stream.close()


def test_usage_totals_are_the_sum_of_every_process_s_replies(front: Front) -> None:
    before = _usage(front)
    told = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}
    for i in range(6):
        reply = front.client(i, USAGE_KEY).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": f"Say {i}."}], max_tokens=5)
        told["requests"] += 1
        told["prompt_tokens"] += reply.usage.prompt_tokens
        told["completion_tokens"] += reply.usage.completion_tokens
        told["cached_tokens"] += reply.usage.prompt_tokens_details.cached_tokens
    deadline = time.monotonic() + 10  # each process writes its increments about once a second
    while True:
        after = _usage(front)
        gained = {k: after.get(k, 0) - before.get(k, 0) for k in told}
        if gained == told or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert gained == told


def _usage(front: Front) -> dict[str, int]:
    rows = httpx.get(f"{front.urls[0]}/v1/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    return next((row for row in rows["data"] if row["key"] == "sk-...0003"), {})


def test_killing_an_instance_mid_stream_keeps_every_other_turn_and_its_sessions_move(
        two_instances: Front, tmp_path: Path, postgres: Postgres) -> None:
    """A third instance joins the pair, starts a turn and is killed (SIGKILL) mid-stream; a turn streaming
    on another instance at that moment is stored, and the killed instance's session continues elsewhere."""
    front = two_instances
    front.paced(0)
    assert ask(front, 0, "victim", "Remember the word 'harbor'.").status_code == 200
    store = [a for a in front.servers[0].proc.args if a.startswith("postgresql://")][0]  # type: ignore[union-attr]
    doomed = start_server(tmp_path, *_sglang_flags([f"http://{w}" for w in _worker_hosts(front)]), *FLAGS,
                          "--store", store, timeout=120)
    try:
        front.paced(0.1)
        survivor = front.client(1).chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Describe a lighthouse at night."}],
            max_tokens=30, stream=True, extra_headers={"X-Session-ID": "survivor"})
        victim = openai.OpenAI(base_url=f"{doomed.base_url}/v1", api_key=KEY, max_retries=0, timeout=60)
        killed = victim.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "Now describe the harbor."}],
            max_tokens=30, stream=True, extra_headers={"X-Session-ID": "victim"})
        next(iter(killed))
        next(iter(survivor))
        doomed.proc.kill()  # no shutdown, no clean-up: the store must notice the connection is gone
        doomed.proc.wait(10)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in survivor if chunk.choices)
    finally:
        doomed.stop()
    front.paced(0)
    headers = {"Authorization": f"Bearer {KEY}"}
    stored = httpx.get(f"{front.urls[0]}/v1/sessions/survivor", headers=headers).json()
    assert stored["turns"] == 1 and stored["messages"][-1]["content"] == text
    moved = ask(front, 1, "victim", "What word did I ask you to remember?")
    assert moved.status_code == 200
    victim_session = httpx.get(f"{front.urls[1]}/v1/sessions/victim", headers=headers).json()
    assert victim_session["turns"] == 2  # the first turn and this one: the killed turn was never completed


def _worker_hosts(front: Front) -> list[str]:
    args = front.servers[0].proc.args
    return [a.removeprefix("http://") for a, prev in zip(args[1:], args, strict=False)  # type: ignore[arg-type]
            if prev == "--sglang-url"]


def test_while_postgresql_is_down_requests_without_a_session_are_served(two_instances: Front) -> None:
    """A store outage: chat without X-Session-ID goes on (limits fall back to the process's own), a session
    or the usage report is 503 store_unavailable, and the usage of the outage is written once it is back."""
    import shutil
    import tempfile

    from tests.postgres import start_postgres

    folder = Path(tempfile.mkdtemp(prefix="lodestar-pg-"))
    pg = start_postgres(folder)
    server = None
    try:
        hosts = [f"http://{w}" for w in _worker_hosts(two_instances)]
        server = start_server(folder, *_sglang_flags(hosts), *FLAGS, "--store", new_database(pg),
                              "--store-timeout-s", "1", timeout=120)
        front = Front([server], [server.base_url], two_instances.workers)
        front.paced(0)
        before = _usage(front).get("requests", 0)
        pg.stop()
        for i in range(2):
            reply = front.client(i, USAGE_KEY).chat.completions.create(
                model="smollm2", messages=[{"role": "user", "content": "Say yes."}], max_tokens=3)
            assert reply.choices[0].message.content
        with pytest.raises(openai.APIStatusError) as down:
            ask(front, 0, "during-outage", "hi")
        assert down.value.status_code == 503 and down.value.body["code"] == "store_unavailable"  # type: ignore[index]
        report = httpx.get(f"{server.base_url}/v1/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
        assert report.status_code == 503 and report.json()["error"]["code"] == "store_unavailable"
        pg.start()
        deadline = time.monotonic() + 15
        while _usage_or_none(front) != before + 2:
            assert time.monotonic() < deadline, "the outage's usage was not written once the store was back"
            time.sleep(0.3)
        assert ask(front, 1, "after-outage", "hi").status_code == 200
    finally:
        if server is not None:
            server.stop()
        pg.stop()
        shutil.rmtree(folder, ignore_errors=True)


def _usage_or_none(front: Front) -> int | None:
    r = httpx.get(f"{front.urls[0]}/v1/admin/usage", headers={"Authorization": f"Bearer {ADMIN}"})
    return next((row["requests"] for row in r.json()["data"] if row["key"] == "sk-...0003"), 0) \
        if r.status_code == 200 else None
