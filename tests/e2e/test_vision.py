"""Image inputs end to end: the official openai client, a real server, the tiny random Qwen2.5-VL fixture,
and an image origin on 127.0.0.1 that the test configuration allows by name."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import ServerProcess, start_server

PROMPT = "What is in this picture?"


def image_bytes(fmt: str, size: tuple[int, int] = (120, 90), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    out = io.BytesIO()
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # some structure, so different images really differ
        for y in range(0, size[1], 5):
            img.putpixel((x, y), ((x * 9) % 256, (y * 13) % 256, (x * y) % 256))
    img.save(out, format=fmt)
    return out.getvalue()


def data_url(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


PNG = image_bytes("PNG")


def user(*urls: str, text: str = PROMPT, detail: str | None = None) -> list[dict]:
    parts: list[dict] = [{"type": "text", "text": text}]
    for url in urls:
        image_url = {"url": url} if detail is None else {"url": url, "detail": detail}
        parts.append({"type": "image_url", "image_url": image_url})
    return [{"role": "user", "content": parts}]


# -- the image origin ---------------------------------------------------------------------------------
class Origin:
    """Routes: /img.png, /redirect/N (N hops then the image), /to/<url> (redirect there), /big (streams
    until told to stop), /slow (answers after 5 s), /missing (404), /text (not an image)."""

    def __init__(self) -> None:
        self.big_bytes_sent = 0
        self.hosts: list[str] = []
        origin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802 (http.server's naming)
                origin.hosts.append(self.headers.get("Host", ""))
                path = self.path
                if path == "/img.png":
                    return self._send(200, PNG, "image/png")
                if path.startswith("/redirect/"):
                    hops = int(path.rsplit("/", 1)[1])
                    return self._redirect(f"/redirect/{hops - 1}" if hops > 1 else "/img.png")
                if path.startswith("/to/"):
                    return self._redirect(path[len("/to/"):])
                if path == "/big":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.end_headers()
                    chunk = PNG[:64] + b"\0" * (64 * 1024 - 64)
                    try:
                        for _ in range(800):  # 50 MiB if nobody stops reading
                            self.wfile.write(chunk)
                            origin.big_bytes_sent += len(chunk)
                    except OSError:
                        pass
                    return None
                if path == "/slow":
                    time.sleep(5)
                    return self._send(200, PNG, "image/png")
                if path == "/text":
                    return self._send(200, b"hello, not an image", "image/png")
                return self._send(404, b"missing", "text/plain")

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

            def _redirect(self, location: str) -> None:
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.close()


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("media")
    (folder / "cat.png").write_bytes(PNG)
    return str(folder)


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory, tiny_vl_model, media_dir) -> Iterator[ServerProcess]:
    server = start_server(
        tmp_path_factory.mktemp("vision"), "--model", str(tiny_vl_model), "--quantize", "none",
        "--image-private-hosts", "127.0.0.1", "--image-max-redirects", "2", "--image-fetch-timeout-s", "1.5",
        "--image-max-bytes", str(1 << 20), "--max-images", "3", "--image-media-dir", media_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def vclient(vision_server):
    return openai.OpenAI(base_url=f"{vision_server.base_url}/v1", api_key="x", max_retries=0, timeout=60)


def model_id(client: openai.OpenAI) -> str:
    return client.models.list().data[0].id


def ask(client: openai.OpenAI, messages: list[dict], **kw):
    return client.chat.completions.create(model=model_id(client), messages=messages, max_tokens=kw.pop(
        "max_tokens", 3), temperature=0, **kw)


def refused(client: openai.OpenAI, messages: list[dict]) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, messages)
    return info.value


def error_of(exc: openai.APIStatusError) -> dict:
    return exc.response.json()["error"]


# -- accepted images ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"),
                                                 ("WEBP", "image/webp"), ("GIF", "image/gif")])
def test_base64_images_of_each_format(vclient, fmt, media_type):
    reply = ask(vclient, user(data_url(image_bytes(fmt), media_type)))
    assert reply.choices[0].finish_reason in ("stop", "length")
    text_only = ask(vclient, user())
    # 120x90 at the default budget -> 112x84 after rounding to 28 px: 4 x 3 = 12 image tokens, plus the
    # vision start/end markers the template adds around the placeholder.
    assert reply.usage.prompt_tokens - text_only.usage.prompt_tokens == 12 + 2


def test_detail_maps_to_pixel_budget(vclient):
    big = data_url(image_bytes("PNG", (1000, 1000)), "image/png")
    low = ask(vclient, user(big, detail="low")).usage.prompt_tokens
    high = ask(vclient, user(big, detail="high")).usage.prompt_tokens
    base = ask(vclient, user()).usage.prompt_tokens
    # low: 512x512 budget -> 504x504 after rounding to 28 px -> 18x18 = 324 tokens. high: 1000x1000 fits
    # the 1024^2 budget -> 1008x1008 -> 36x36 = 1296 tokens.
    assert low - base == 324 + 2
    assert high - base == 1296 + 2


def test_different_images_give_different_logits(vclient):
    def top(url: str) -> list[tuple[str, float]]:
        r = ask(vclient, user(url), max_tokens=1, logprobs=True, top_logprobs=5)
        return [(t.token, round(t.logprob, 4)) for t in r.choices[0].logprobs.content[0].top_logprobs]

    red = data_url(image_bytes("PNG", color=(220, 20, 20)), "image/png")
    blue = data_url(image_bytes("PNG", color=(20, 20, 220)), "image/png")
    assert top(red) == top(red)
    assert top(red) != top(blue)


def test_streaming_with_an_image(vclient):
    stream = vclient.chat.completions.create(model=model_id(vclient), messages=user(data_url(PNG, "image/png")),
                                             max_tokens=4, temperature=0, stream=True,
                                             stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 14
    assert any(c.choices and c.choices[0].finish_reason for c in chunks)


def test_fetched_from_an_allowed_local_origin(vclient, origin):
    reply = ask(vclient, user(origin.url("/img.png")))
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert f"127.0.0.1:{origin.port}" in origin.hosts


def test_redirects_within_the_limit_are_followed(vclient, origin):
    assert ask(vclient, user(origin.url("/redirect/2"))).choices


def test_repeated_image_reuses_the_vision_encoder(vclient, vision_server):
    url = data_url(image_bytes("PNG", color=(10, 200, 10)), "image/png")
    before = httpx.get(f"{vision_server.base_url}/ready").json()
    turn = user(url)
    ask(vclient, turn)
    ask(vclient, turn + [{"role": "assistant", "content": "A green square."},
                         {"role": "user", "content": "And its colour?"}])
    after = httpx.get(f"{vision_server.base_url}/ready").json()
    engine_before, engine_after = before["engine"], after["engine"]
    assert engine_after["vision_cache_misses"] - engine_before["vision_cache_misses"] == 1
    assert engine_after["vision_cache_hits"] - engine_before["vision_cache_hits"] >= 1


def test_file_url_inside_the_media_dir(vclient, media_dir):
    assert ask(vclient, user(f"file://{media_dir}/cat.png")).choices


# -- refusals -----------------------------------------------------------------------------------------
def test_private_origin_refused_by_default(tmp_path_factory, tiny_vl_model, origin):
    server = start_server(tmp_path_factory.mktemp("vision-default"), "--model", str(tiny_vl_model),
                          "--quantize", "none")
    try:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=60)
        hits = len(origin.hosts)
        err = error_of(refused(client, user(origin.url("/img.png"))))
        assert err["code"] == "image_url_refused"
        assert "loopback" in err["message"]
        assert err["param"] == "messages[0].content[1].image_url.url"
        err = error_of(refused(client, user(f"file://{__file__}")))
        assert err["code"] == "image_url_refused"
        assert len(origin.hosts) == hits  # the origin was never contacted
    finally:
        server.stop()


@pytest.mark.parametrize("target", ["http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x.png",
                                    "http://[::ffff:127.0.0.2]/x.png", "http://2130706434/x.png"])
def test_redirect_to_a_refused_address(vclient, origin, target):
    err = error_of(refused(vclient, user(origin.url(f"/to/{target}"))))
    assert err["code"] == "image_url_refused"


def test_redirect_chain_longer_than_allowed(vclient, origin):
    err = error_of(refused(vclient, user(origin.url("/redirect/3"))))
    assert err["code"] == "image_fetch_failed"
    assert "redirect" in err["message"]


def test_body_larger_than_the_limit_stops_reading_early(vclient, origin):
    err = error_of(refused(vclient, user(origin.url("/big"))))
    assert err["code"] == "image_too_large"
    time.sleep(0.5)
    assert origin.big_bytes_sent < 20 << 20  # far less than the 50 MiB the origin would send


def test_slow_origin_times_out(vclient, origin):
    started = time.monotonic()
    err = error_of(refused(vclient, user(origin.url("/slow"))))
    assert err["code"] == "image_fetch_timeout"
    assert time.monotonic() - started < 4.5


def test_upstream_status_and_non_image_body(vclient, origin):
    err = error_of(refused(vclient, user(origin.url("/missing"))))
    assert err["code"] == "image_fetch_failed" and "404" in err["message"]
    assert error_of(refused(vclient, user(origin.url("/text"))))["code"] == "invalid_image"


def test_decompression_bomb_is_refused(vclient):
    out = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(out, format="PNG")  # 100 MP, a few kB compressed
    err = error_of(refused(vclient, user(data_url(out.getvalue(), "image/png"))))
    assert err["code"] == "image_too_large"


@pytest.mark.parametrize(("payload", "code"), [
    (data_url(image_bytes("JPEG")[:300], "image/jpeg"), "invalid_image"),  # truncated
    (data_url(b"\x00\x01 definitely not an image", "image/png"), "invalid_image"),
    (data_url(image_bytes("JPEG"), "image/png"), "invalid_image"),  # label says PNG, bytes are JPEG
    (data_url(PNG, "text/plain"), "invalid_image_url"),
    ("data:image/png;base64,@@@not-base64@@@", "invalid_image_url"),
    ("data:image/png," + "x" * 10, "invalid_image_url"),  # not base64
    ("ftp://127.0.0.1/x.png", "invalid_image_url"),
])
def test_bad_image_data(vclient, payload, code):
    assert error_of(refused(vclient, user(payload)))["code"] == code


def test_file_url_outside_the_media_dir(vclient, media_dir):
    err = error_of(refused(vclient, user(f"file://{media_dir}/../../etc/passwd")))
    assert err["code"] == "image_url_refused"


def test_too_many_images(vclient):
    url = data_url(PNG, "image/png")
    err = error_of(refused(vclient, user(url, url, url, url)))
    assert err["code"] == "too_many_images"


def test_unknown_part_type_and_images_outside_user_messages(vclient):
    messages = [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]
    err = error_of(refused(vclient, messages))
    assert "input_audio" in err["message"] and err["code"] == "invalid_content_part"
    image = {"type": "image_url", "image_url": {"url": data_url(PNG, "image/png")}}
    messages = [{"role": "system", "content": [image]}, {"role": "user", "content": "hi"}]
    err = error_of(refused(vclient, messages))
    assert err["param"] == "messages[0].content[0]"


def test_placeholder_token_in_text_is_refused(vclient):
    err = error_of(refused(vclient, user(data_url(PNG, "image/png"), text="look: <|image_pad|>")))
    assert err["code"] == "invalid_image_placeholder"


def test_image_sent_to_a_text_only_model(client):
    err = error_of(refused(client, user(data_url(PNG, "image/png"))))
    assert err["code"] == "image_input_not_supported"


def test_models_endpoint_and_ready_figures(vision_server):
    ready = httpx.get(f"{vision_server.base_url}/ready").json()
    assert "vision_cache_hits" in json.dumps(ready)
