"""GET /metrics with a fake engine: request counts by route and status, token timings, tokens, engine figures."""

from __future__ import annotations

import asyncio

from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from chat.pipeline import ServedModel
from core.config import build_settings
from core.settings import ImageSettings
from multimodal.loader import ImageLoader
from tests.app.test_api_fake_engine import CHAT, SCRIPT_TOKENS, body, make_app
from tests.fakes import FakeEngine, FakeRenderer
from tests.multimodal.imaging import data_url, solid


def scrape(c: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def test_metrics_count_requests_tokens_and_timings() -> None:
    with TestClient(make_app()) as c:
        plain = c.post(CHAT, json=body()).json()
        streamed = c.post(CHAT, json=body(stream=True, stream_options={"include_usage": True}))
        assert streamed.status_code == 200 and "[DONE]" in streamed.text
        assert c.post(CHAT, json=body(temperature=9)).status_code == 400
        c.get("/v1/sessions/abc")  # 404 from a routed handler: counted under its template, not its id
        m = scrape(c)

    def requests(status: str) -> float:
        return m[("lodestar_requests_total", (("method", "POST"), ("route", CHAT), ("status", status)))]

    assert requests("200") == 2 and requests("400") == 1
    session_routes = [k for k in m if k[0] == "lodestar_requests_total" and "/v1/sessions/" in dict(k[1])["route"]]
    assert session_routes and all("abc" not in dict(k[1])["route"] for k in session_routes)
    # two generations: two first tokens, and a gap for every further token event
    assert m[("lodestar_time_to_first_token_seconds_count", ())] == 2
    assert m[("lodestar_queue_wait_seconds_count", ())] == 2
    assert m[("lodestar_inter_token_latency_seconds_count", ())] == 2 * (SCRIPT_TOKENS - 1)
    usage = plain["usage"]
    assert m[("lodestar_tokens_total", (("kind", "prompt"),))] == 2 * usage["prompt_tokens"]
    assert m[("lodestar_tokens_total", (("kind", "completion"),))] == 2 * usage["completion_tokens"]
    assert m[("lodestar_tokens_total", (("kind", "cached"),))] == 0
    # the engine's own figures, read at scrape time
    assert m[("lodestar_model_loaded", ())] == 1
    assert m[("lodestar_engine_requests", ())] == 2  # a gauge: the fake engine counts the requests it saw
    assert ("lodestar_engine_waiting", ()) in m and ("lodestar_engine_running", ()) in m


def test_metrics_need_the_key_when_keys_are_configured() -> None:
    with TestClient(make_app(api_keys=("sk-1",))) as c:
        assert c.get("/metrics").status_code == 401
        r = c.get("/metrics", headers={"Authorization": "Bearer sk-1"})
        assert r.status_code == 200 and "lodestar_requests_total" in r.text


def test_metrics_count_schema_checks() -> None:
    """Each new grammar is checked once in a child process (each schema, then the request's whole grammar);
    the same tools again are answered from the verdicts already known."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"metrics_q": {"type": "string", "maxLength": 7}}}}}]
    with TestClient(make_app()) as c:
        for _ in range(2):
            assert c.post(CHAT, json=body(response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {"metrics_m": {"type": "integer"}}}}},
                tools=tools, tool_choice="none")).status_code == 200
        m = scrape(c)
    assert m[("lodestar_schema_checks_total", ())] == 3
    assert m[("lodestar_schema_checks_stopped_total", ())] == 0


def test_metrics_count_tool_call_schema_mismatches(monkeypatch) -> None:
    """The parser's count of arguments that broke their schema despite the grammar reaches /metrics."""
    from tools import calls

    with TestClient(make_app()) as c:
        before = scrape(c)[("lodestar_tool_call_schema_mismatches_total", ())]
        monkeypatch.setattr(calls, "schema_mismatches", calls.schema_mismatches + 2)
        assert scrape(c)[("lodestar_tool_call_schema_mismatches_total", ())] == before + 2


def test_metrics_show_the_image_cache_and_failures(tmp_path) -> None:
    """A vision model's image loader: decoded-image cache figures and failures by reason, read at scrape time."""
    engine = FakeEngine(vision=True)
    images = ImageLoader(ImageSettings())
    served = ServedModel(engine=engine, renderer=FakeRenderer(engine.tokenizer),  # type: ignore[arg-type]
                         fingerprint="fp_fake", images=images)
    picture = data_url(solid("PNG", (16, 16)))

    async def loads() -> None:
        await asyncio.gather(images.load(picture, 1000), images.load(picture, 1000))  # one decode, shared
        await images.load(picture, 1000)  # from the cache
        await images.load(picture, 100)  # another budget: another entry
        await asyncio.gather(images.load(data_url(b"not an image"), 1000), return_exceptions=True)

    with TestClient(create_app(build_settings({"sessions_path": str(tmp_path / "db.sqlite3")}), served)) as c:
        assert scrape(c)[("lodestar_image_cache_entries", ())] == 0
        asyncio.run(loads())
        m = scrape(c)
    assert m[("lodestar_image_cache_hits_total", ())] == 1
    assert m[("lodestar_image_cache_misses_total", ())] == 2
    assert m[("lodestar_image_cache_shared_total", ())] == 1
    assert m[("lodestar_image_cache_entries", ())] == 2
    assert m[("lodestar_image_failures_total", (("reason", "invalid_image"),))] == 1
