"""Sessions keyed by X-Session-ID, end to end through the official openai client and real servers
(SmolLM2 for the mechanics, the default model for recalling a fact across turns)."""

from __future__ import annotations

import concurrent.futures
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import SMALL_MODEL, ServerProcess, start_server

SYSTEM = {"role": "system", "content": "You are a terse assistant."}


def sid() -> str:
    return f"test:{uuid.uuid4().hex[:12]}"


def chat(client, session: str, messages, max_tokens: int = 8, model: str = "smollm2", **kw):
    return client.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=max_tokens, temperature=0,
        extra_headers={"X-Session-ID": session}, **kw)


def cached(reply) -> int:
    return reply.usage.prompt_tokens_details.cached_tokens


def get_session(server: ServerProcess, session: str, key: str = "unused") -> httpx.Response:
    return httpx.get(f"{server.base_url}/v1/sessions/{session}", headers={"Authorization": f"Bearer {key}"})


def test_invalid_session_id_is_a_400(client):
    for bad in ("has space", "x" * 129, "semi;colon", ""):
        with pytest.raises(openai.BadRequestError) as caught:
            chat(client, bad, [{"role": "user", "content": "hi"}])
        assert caught.value.body["code"] == "invalid_session_id"
        assert caught.value.body["param"] == "X-Session-ID"


def test_ten_turns_each_reuse_the_whole_previous_turn(client, small_server):
    session = sid()
    messages = [SYSTEM]
    previous = None
    for turn in range(10):
        messages.append({"role": "user", "content": f"Turn {turn}: give me one word about the sea."})
        raw = chat(client, session, messages)
        assert raw.headers["X-Session-ID"] == session
        reply = raw.parse()
        if previous is not None:
            # Everything the model saw or wrote last turn is reused (bar the last sampled token, never fed).
            assert cached(reply) >= previous.usage.prompt_tokens + previous.usage.completion_tokens - 1
            assert cached(reply) < reply.usage.prompt_tokens
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        previous = reply
    body = get_session(small_server, session).json()
    assert body["turns"] == 10 and len(body["messages"]) == 21
    assert body["cached_tokens"] > 0 and body["tokens"] > body["prompt_tokens"] // 10


def test_new_messages_only_are_appended(client, small_server):
    session = sid()
    first = chat(client, session, [SYSTEM, {"role": "user", "content": "Say: apple."}]).parse()
    second = chat(client, session, [{"role": "user", "content": "Now say: pear."}]).parse()
    # The stored conversation (system, user, reply) came first: the prompt grew and was reused.
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens - 1
    assert cached(second) >= first.usage.prompt_tokens + first.usage.completion_tokens - 1
    roles = [m["role"] for m in get_session(small_server, session).json()["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_history_rewrite_replaces_the_transcript(client, small_server):
    session = sid()
    chat(client, session, [SYSTEM, {"role": "user", "content": "Say: apple."}])
    edited = [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Say: pear."}]
    reply = chat(client, session, edited).parse()
    body = get_session(small_server, session).json()
    assert [m["content"] for m in body["messages"][:2]] == ["You are a pirate.", "Say: pear."]
    assert len(body["messages"]) == 3 and body["turns"] == 2
    assert cached(reply) < reply.usage.prompt_tokens - 1  # only the common start is reused


def test_get_and_delete(client, small_server):
    session = sid()
    chat(client, session, [{"role": "user", "content": "hello"}])
    body = get_session(small_server, session).json()
    assert body["id"] == session and body["object"] == "session" and body["turns"] == 1
    gone = httpx.delete(f"{small_server.base_url}/v1/sessions/{session}", headers={"Authorization": "Bearer unused"})
    assert gone.status_code == 200 and gone.json()["deleted"] is True
    missing = get_session(small_server, session)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "session_not_found"
    again = httpx.delete(f"{small_server.base_url}/v1/sessions/{session}", headers={"Authorization": "Bearer unused"})
    assert again.status_code == 404


def test_concurrent_requests_on_one_session_are_serialised(client, small_server):
    session = sid()
    chat(client, session, [SYSTEM, {"role": "user", "content": "Say: one."}])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(chat, client, session, [{"role": "user", "content": f"Say: {w}."}], 16)
                   for w in ("two", "three")]
        for f in futures:
            assert f.result().status_code == 200
    body = get_session(small_server, session).json()
    assert body["turns"] == 3
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant"] + ["user", "assistant"] * 2


def test_streamed_turns_are_stored(client, small_server):
    session = sid()
    stream = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hi."}],
                                            max_tokens=8, temperature=0, stream=True,
                                            extra_headers={"X-Session-ID": session})
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    body = get_session(small_server, session).json()
    assert body["messages"][-1] == {"role": "assistant", "content": text}


def test_a_client_that_disconnects_mid_stream_still_finds_what_it_received(small_server):
    session = sid()
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Write a long story about a fox."}],
            "max_tokens": 200, "temperature": 0, "stream": True, "ignore_eos": True}
    received = []
    with httpx.Client(timeout=60) as http, http.stream(
            "POST", f"{small_server.base_url}/v1/chat/completions", json=body,
            headers={"X-Session-ID": session, "Authorization": "Bearer unused"}) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content"' in line:
                received.append(json.loads(line[6:])["choices"][0]["delta"].get("content") or "")
            if len(received) >= 6:
                break  # leave mid-stream
    text = "".join(received)
    deadline = time.monotonic() + 30
    while (found := get_session(small_server, session)).status_code == 404 and time.monotonic() < deadline:
        time.sleep(0.2)
    stored = found.json()["messages"][-1]
    assert stored["role"] == "assistant" and stored["content"].startswith(text) and text


def test_recall_a_fact_from_turn_one(default_server):
    client = openai.OpenAI(base_url=f"{default_server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)
    session = sid()
    chat(client, session, [{"role": "user", "content": "My cat is called Zorblax. Just say OK."}], model="default")
    reply = chat(client, session, [{"role": "user", "content": "What is my cat called? One word."}],
                 max_tokens=12, model="default").parse()
    assert "zorblax" in reply.choices[0].message.content.lower()


# -- servers of their own: keys, busy timeout, expiry, restart, kill -9 -------------------------------------


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("sessions-keyed")
    server = start_server(folder, "--model", SMALL_MODEL, "--api-key", "key-a", "--api-key", "key-b",
                          "--session-busy-timeout-s", "0.2", "--sessions-path", str(folder / "s.db"))
    yield server
    server.stop()


def keyed(server: ServerProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def test_sessions_belong_to_their_key(keyed_server):
    session = sid()
    chat(keyed(keyed_server, "key-a"), session, [{"role": "user", "content": "Secret: blue."}])
    assert get_session(keyed_server, session, "key-b").status_code == 404
    chat(keyed(keyed_server, "key-b"), session, [{"role": "user", "content": "Hello."}])
    a = get_session(keyed_server, session, "key-a").json()
    b = get_session(keyed_server, session, "key-b").json()
    assert a["messages"][0]["content"] == "Secret: blue." and b["messages"][0]["content"] == "Hello."
    assert all("blue" not in (m["content"] or "") for m in b["messages"])


def test_a_busy_session_gives_409_after_the_wait(keyed_server):
    client, session = keyed(keyed_server, "key-a"), sid()
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        slow = pool.submit(chat, client, session, [{"role": "user", "content": "Count to fifty."}], 120)
        time.sleep(0.5)  # the first request holds the session
        with pytest.raises(openai.ConflictError) as caught:
            chat(client, session, [{"role": "user", "content": "hi"}])
        assert caught.value.body["code"] == "session_busy"
        assert slow.result().status_code == 200


def test_sessions_expire_when_idle(tmp_path):
    server = start_server(tmp_path, "--model", SMALL_MODEL, "--session-idle-timeout-s", "2",
                          "--sessions-path", str(tmp_path / "s.db"))
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
        session = sid()
        chat(client, session, [{"role": "user", "content": "hello"}])
        assert get_session(server, session).status_code == 200
        time.sleep(2.5)
        assert get_session(server, session).status_code == 404
    finally:
        server.stop()


def test_a_restarted_server_continues_the_session(tmp_path):
    """Stopped, then SIGKILLed right after a reply (nothing gets to flush): each time the next server
    continues the sessions from the same database. Three starts cover both ends."""
    db = str(tmp_path / "s.db")
    sessions, replies = [sid(), sid()], []
    for run, ending in enumerate(["stop", "kill", None]):
        server = start_server(tmp_path, "--model", SMALL_MODEL, "--sessions-path", db)
        try:
            client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120)
            if run > 0:  # the session the previous server ended on goes on here
                session, first = sessions[run - 1], replies[run - 1]
                stored = get_session(server, session).json()["messages"][-1]["content"]
                assert stored == first.choices[0].message.content
                second = chat(client, session, [{"role": "user", "content": "And: pear."}]).parse()
                assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens - 1
                assert get_session(server, session).json()["turns"] == 2
            if ending is not None:
                replies.append(chat(client, sessions[run], [{"role": "user", "content": "Say: apple."}]).parse())
        finally:
            if ending == "kill":
                server.proc.kill()
                server.proc.wait()
            else:
                server.stop()


def test_prompt_truncate_len_keeps_the_system_prompt_and_the_latest_turn(client, small_server):
    history = [SYSTEM]
    for i in range(12):
        history += [{"role": "user", "content": f"Fact {i}: the number {i} is written as {i}."},
                    {"role": "assistant", "content": f"Noted fact {i}."}]
    history.append({"role": "user", "content": "Which fact came last?"})
    full = client.chat.completions.create(model="smollm2", messages=history, max_tokens=4, temperature=0)
    reply = client.chat.completions.create(model="smollm2", messages=history, max_tokens=4, temperature=0,
                                           extra_body={"prompt_truncate_len": 150})
    assert full.usage.prompt_tokens > 150 >= reply.usage.prompt_tokens
    # On a session, the prompt is truncated but the transcript keeps the whole conversation.
    session = sid()
    chat(client, session, history, extra_body={"prompt_truncate_len": 150})
    turn = chat(client, session, [{"role": "user", "content": "And before?"}],
                extra_body={"prompt_truncate_len": 150}).parse()
    assert turn.usage.prompt_tokens <= 150
    assert len(get_session(small_server, session).json()["messages"]) == len(history) + 3
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="smollm2", messages=history, max_tokens=4,
                                       extra_body={"prompt_truncate_len": 5})
    assert caught.value.body["param"] == "prompt_truncate_len"
