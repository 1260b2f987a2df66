#!/usr/bin/env bash
# GPU smoke test: SGLang on one GPU, Lodestar in front of it, checks through the official openai client.
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
$SETSID "$PYTHON" -m sglang.launch_server --model-path "$MODEL" --host 127.0.0.1 --port "$SGLANG_PORT" \
  --grammar-backend llguidance $SGLANG_ARGS >"$WORK/sglang.log" 2>&1 &
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
BASE_URL="http://127.0.0.1:$PORT/v1" "$APP_PYTHON" - <<'PY' || status=$?
import base64, io, json, os, sys, uuid

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


@check("image")
def _():
    img = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(img).rectangle((80, 60, 240, 180), fill="red")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
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


sys.exit(failures)
PY
echo "$status check(s) failed"
exit "$status"
