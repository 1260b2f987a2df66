#!/usr/bin/env bash
# GPU smoke test: SGLang on one GPU, Lodestar in front of it, checks through the official openai client.
# Under 10 minutes on one GPU with a 0.5-3B model, once the weights are on disk.
# Prints PASS/FAIL per check; the exit status is the number of failures. See docs/deployment.md.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-Qwen/Qwen2.5-VL-3B-Instruct}
SGLANG_PORT=${SGLANG_PORT:-30000}
PORT=${PORT:-8000}
PYTHON=${PYTHON:-python3}                    # the interpreter with SGLang
APP_PYTHON=${APP_PYTHON:-.venv/bin/python}   # Lodestar's (make setup)
SGLANG_ARGS=${SGLANG_ARGS:-}                 # extra sglang.launch_server arguments
READY_TIMEOUT=${READY_TIMEOUT:-1800}

WORK=$(mktemp -d)
SGLANG_PID=""
APP_PID=""
stop() {
  for pid in $APP_PID $SGLANG_PID; do   # SGLang's group too: its scheduler and detokenizer processes
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for _ in $(seq 30); do   # up to 30 s to stop cleanly
    alive=0
    for pid in $APP_PID $SGLANG_PID; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 1
  done
  for pid in $APP_PID $SGLANG_PID; do kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; done
  echo "logs: $WORK"
}
trap stop EXIT
trap 'exit 130' INT TERM

SETSID=$(command -v setsid || true)
# shellcheck disable=SC2086  # SGLANG_ARGS is split into arguments on purpose
# Deterministic inference: seeds take effect only with it (the seeded_repeat check).
$SETSID "$PYTHON" -m sglang.launch_server --model-path "$MODEL" --host 127.0.0.1 --port "$SGLANG_PORT" \
  --grammar-backend llguidance --incremental-streaming-output --enable-deterministic-inference \
  $SGLANG_ARGS >"$WORK/sglang.log" 2>&1 &
SGLANG_PID=$!
# Qwen2.5-VL does not reason natively: reasoning requests use Lodestar's prompted thinking (two-call budgets).
"$APP_PYTHON" -m app serve --engine sglang --sglang-url "http://127.0.0.1:$SGLANG_PORT" --model "$MODEL" \
  --port "$PORT" --prompted-thinking --data-dir "$WORK/data" >"$WORK/lodestar.log" 2>&1 &
APP_PID=$!

echo "waiting for http://127.0.0.1:$PORT/ready (up to $READY_TIMEOUT s; logs in $WORK)"
deadline=$((SECONDS + READY_TIMEOUT))
until curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null; do
  for name in SGLANG_PID APP_PID; do
    if ! kill -0 "${!name}" 2>/dev/null; then
      echo "FAIL startup: ${name%_PID} exited"; tail -n 30 "$WORK/sglang.log" "$WORK/lodestar.log"; exit 1
    fi
  done
  if ((SECONDS > deadline)); then echo "FAIL startup: not ready after $READY_TIMEOUT s"; exit 1; fi
  sleep 5
done

status=0
BASE_URL="http://127.0.0.1:$PORT/v1" SGLANG_URL="http://127.0.0.1:$SGLANG_PORT" "$APP_PYTHON" - <<'PY' || status=$?
import base64, io, json, os, subprocess, sys, uuid

import httpx

import jsonschema
from openai import OpenAI
from PIL import Image, ImageDraw

client = OpenAI(base_url=os.environ["BASE_URL"], api_key="smoke")
model = client.models.list().data[0].id
failures = 0


def check(name):  # decorator: runs the check at once and reports it
    def run(fn):
        global failures
        try:
            fn()
            print(f"PASS {name}")
        except Exception as exc:  # an assertion or an API error: report it and go on
            failures += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}")
    return run


def ask(content, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}],
                                          max_tokens=kw.pop("max_tokens", 64), temperature=0, **kw)


@check("chat")
def _():
    assert ask("Name one planet of the solar system.").choices[0].message.content.strip(), "empty answer"


@check("streaming")
def _():
    parts = [c.choices[0].delta.content for c in ask("Count from one to ten in words.", stream=True)
             if c.choices and c.choices[0].delta.content]
    assert len(parts) >= 3, f"only {len(parts)} content chunks"
    assert "".join(parts).strip(), "empty text"


def png_url():
    img = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(img).rectangle((80, 60, 240, 180), fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@check("image")
def _():
    url = png_url()
    text = {"type": "text", "text": "What color is the rectangle?"}
    with_image = ask([text, {"type": "image_url", "image_url": {"url": url}}])
    without = ask([text])
    assert with_image.choices[0].message.content.strip(), "empty answer"
    assert with_image.usage.prompt_tokens > without.usage.prompt_tokens, \
        f"prompt_tokens {with_image.usage.prompt_tokens} with image, {without.usage.prompt_tokens} without"


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city"],
          "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}}}


@check("tool_required")
def _():
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                               "parameters": SCHEMA}}]
    reply = ask("What is the weather in Paris?", tools=tools, tool_choice="required", max_tokens=128)
    calls = reply.choices[0].message.tool_calls
    assert calls, "no tool call"
    assert calls[0].function.name == "get_weather", calls[0].function.name
    jsonschema.validate(json.loads(calls[0].function.arguments), SCHEMA)


@check("reasoning_budget")
def _():
    budget = 64
    reply = ask("Is 221 a prime number?", max_tokens=400, extra_body={"reasoning": {"max_tokens": budget}})
    used = reply.usage.completion_tokens_details.reasoning_tokens
    assert (reply.choices[0].message.model_extra or {}).get("reasoning_content"), "no reasoning_content"
    assert 0 < used <= budget, f"reasoning_tokens {used}, budget {budget}"
    assert (reply.choices[0].message.content or "").strip(), "no answer after the reasoning"


@check("session_cache")
def _():
    headers = {"X-Session-ID": f"smoke-{uuid.uuid4().hex[:12]}"}
    first = ask("My favourite colour is teal. Reply with one short sentence.", extra_headers=headers)
    second = ask("What is my favourite colour?", extra_headers=headers)
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached and cached > 0, f"turn 2 cached_tokens {cached} (turn 1 prompt_tokens {first.usage.prompt_tokens})"


@check("ignore_eos")
def _():
    reply = ask("Say hi.", max_tokens=48, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 48, f"completion_tokens {reply.usage.completion_tokens}, asked 48"
    assert reply.choices[0].finish_reason == "length", reply.choices[0].finish_reason


@check("seeded_repeat")
def _():
    def sample(seed):
        return client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Write a short poem about the sea."}],
            max_tokens=40, temperature=1.0, seed=seed).choices[0].message.content
    first, again = sample(1234), sample(1234)
    assert first == again, f"seed 1234 gave {first!r}, then {again!r}"


@check("context_length")
def _():
    ours = client.models.list().data[0].model_extra["context_length"]
    sglang = os.environ["SGLANG_URL"]
    theirs = httpx.get(sglang + "/v1/models", timeout=10).json()["data"][0]["max_model_len"]
    longest = httpx.get(sglang + "/server_info", timeout=10).json().get("max_req_input_len")
    expected = min(theirs, longest + 6) if longest else theirs  # a KV pool smaller than the context bounds it
    assert ours == expected, f"Lodestar says {ours}, SGLang serves {theirs} (max_req_input_len {longest})"
    reply = ask("Say hi.", max_tokens=None)  # the rest of the context, not a fallback
    assert reply.choices[0].message.content.strip()


@check("literal_image_text")
def _():
    parts = [{"type": "text", "text": "What does the HTML tag <image> do?"},
             {"type": "image_url", "image_url": {"url": png_url()}}]
    try:
        ask(parts)
        raise AssertionError("a literal <image> with one image was accepted")
    except Exception as exc:  # the openai client's BadRequestError
        body = getattr(exc, "body", None) or {}
        assert getattr(exc, "status_code", None) == 400 and body.get("code") == "invalid_image_placeholder", exc
    assert ask("What does the HTML tag <image> do?").choices[0].message.content.strip()  # text only: fine


@check("connection_reuse")
def _():
    port = os.environ["SGLANG_URL"].rsplit(":", 1)[1]

    def local_ports():  # Lodestar's established connections to the worker
        out = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} )"],
                             capture_output=True, text=True, check=True).stdout
        return {line.split()[-2] for line in out.splitlines() if line.strip()}
    seen = set()
    for i in range(10):
        ask(f"Say the number {i}.", max_tokens=8)
        seen |= local_ports()
    assert len(seen) <= 3, f"{len(seen)} connections for 10 requests: {sorted(seen)}"


sys.exit(failures)
PY
echo "$status check(s) failed"
exit "$status"
