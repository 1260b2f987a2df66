"""One frozen settings object: defaults <- TOML file <- LODESTAR_* environment <- command-line flags.

Every key is a field below (its comment is its documentation; docs/configuration.md lists them all). Every
key has an environment variable LODESTAR_<KEY> and a flag --<key-with-dashes>.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import msgspec

MiB = 1 << 20


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    # Network and auth
    host: str = "127.0.0.1"  # address to bind
    port: int = 8000
    api_keys: tuple[str, ...] = ()  # Bearer keys; none = open server (loopback only)
    allow_unauthenticated: bool = False  # allow binding a non-loopback address without keys
    admin_keys: tuple[str, ...] = ()  # Bearer keys for /v1/admin/*; none = the admin routes answer 403
    # Per API key (without api_keys: for all clients together); 0 turns a limit off
    max_concurrent_per_key: int = 64  # requests in flight
    requests_per_minute: int = 0
    tokens_per_minute: int = 0  # prompt + completion tokens of finished requests
    # Model and engine
    model: str = "default"  # catalog id or alias, .gguf file, or Hugging Face folder
    engine: Literal["embedded", "sglang"] = "embedded"  # sglang: SGLang workers on GPUs (docs/deployment.md)
    data_dir: str = "~/.local/share/lodestar"  # converted weights and other state
    quantize: Literal["int8", "none"] = "int8"  # int8 dynamic quantization of Linear layers
    threads: int = 0  # torch threads for the engine's scheduler thread; 0 = one per core
    context_length: int | None = None  # cap below the model's own context length
    max_batch_size: int = 8  # sequences decoded together
    prefill_chunk: int = 256  # prompt tokens per prefill step between decode steps
    max_queue: int = 64  # requests waiting for a batch slot before 429
    queue_timeout_s: float = 60.0  # longest wait for a batch slot before 503
    prefix_cache_bytes: int = 1 << 30  # KV of cached prompt prefixes kept for reuse (embedded engine); 0 = off
    # SGLang engine (docs/deployment.md)
    sglang_url: tuple[str, ...] = ()  # SGLang workers, or one SGLang model gateway; repeat for several
    sglang_api_key: str | None = None  # the key the workers were started with (--api-key), if any
    tokenizer: str | None = None  # folder with the model's tokenizer and chat template; None = the model's
    launch: bool = False  # start sglang.launch_server as a child process (instead of sglang_url)
    sglang_python: str | None = None  # interpreter that has SGLang installed; None = Lodestar's own
    sglang_launch_args: tuple[str, ...] = ()  # extra sglang.launch_server arguments, e.g. --tp-size=2
    sglang_port: int = 30000  # port of the launched SGLang server (on 127.0.0.1)
    sglang_startup_timeout_s: float = 1800.0  # wait for the workers to answer at start-up
    sglang_connect_timeout_s: float = 5.0
    sglang_read_timeout_s: float = 300.0  # longest silence of a worker within one request
    sglang_retry_s: float = 10.0  # a worker that failed stays out of rotation this long
    sglang_health_interval_s: float = 10.0  # /health_generate probes of every worker
    # Connections (app/transport.py): how long and how much a client may take to send a request
    header_timeout_s: float = 10.0  # request line + headers must arrive within this; else 408 and close
    body_timeout_s: float = 60.0  # the whole body must arrive within this after the headers; else 408 and close
    max_header_bytes: int = 32_768  # request line + headers; more is 431 and close
    keepalive_timeout_s: float = 5.0  # an idle keep-alive connection is closed after this
    # Request limits
    max_body_bytes: int = 32 * MiB  # larger bodies get 413 (a larger Content-Length: before the body is read)
    max_messages: int = 2048
    max_content_parts: int = 256  # parts of one message's content array
    max_message_chars: int = 1_048_576  # characters of one message's text (all its text parts)
    max_n: int = 8
    max_stop: int = 4
    max_top_logprobs: int = 20
    max_logit_bias: int = 300  # entries of a request's logit_bias (OpenAI's limit); 0 refuses any entry
    max_tokens_limit: int | None = None  # upper bound for max_tokens; None = the context length
    # Request defaults (OpenAI's unless set)
    default_temperature: float = 1.0
    default_top_p: float = 1.0
    default_max_tokens: int | None = None  # None: the rest of the context
    prompt_truncate_len: int | None = None  # the request field's default; None: no truncation
    confidence_score: bool = False  # always add the confidence_score extension
    # Tools and structured output (docs/tools.md)
    max_tools: int = 128  # tools per request
    max_schema_bytes: int = 65_536  # all tool and response_format schemas of a request, as JSON
    max_schema_depth: int = 32  # nesting depth of one schema
    max_optional_properties: int = 256  # optional properties of one schema object (llguidance's limit is ~500)
    grammar_cache_entries: int = 128  # compiled grammars kept by content hash
    # after a complete tool call, end the reply when the model gives ending at least this probability
    # (embedded engine; 0: only when ending is its likeliest token, as sampling would)
    tool_call_end_probability: float = 0.0
    # tool_choice "auto" after tool results: also read a reply of bare JSON as a call, and leave "none" free
    # (small models then repeat the call they made instead of answering; docs/tools.md#answering-a-tool-result)
    bare_calls_after_tool_results: bool = False
    # tool_choice "auto" after tool results: show the tools to the template again ("show"), leave them out
    # ("hide": small models then answer from the result instead of retyping the call), or as the model's
    # catalog entry says ("model": hide for the default 0.5B model, show otherwise; docs/tools.md)
    tools_after_tool_results: Literal["model", "show", "hide"] = "model"
    # Checking a request's schemas (a child process; docs/security.md): over budget -> 400 schema_too_complex
    grammar_budget_s: float = 2.0  # time for all schema checks of one request
    grammar_memory_bytes: int = 512 * MiB  # address space of one checking process
    grammar_workers: int = 2  # checking processes at once
    # Sessions (docs/sessions.md)
    sessions_path: str | None = None  # SQLite file of session transcripts; None = <data_dir>/sessions.sqlite3
    session_idle_timeout_s: float = 86_400.0  # a session unused for this long is forgotten
    session_busy_timeout_s: float = 30.0  # wait of a request for its session's running request before 409
    # "exact": a continued session's prompt is its stored token ids + the new messages (cache always hits);
    # "template": the whole conversation is rendered again by the template each turn
    session_continuation: Literal["exact", "template"] = "exact"
    # Reasoning (docs/reasoning.md)
    # effort of requests that do not say (reasoning models), and of `reasoning: {enabled: true}`
    reasoning_effort: Literal["xhigh", "high", "medium", "low", "minimal", "none"] = "medium"
    prompted_thinking: bool = False  # models that do not reason think in <think> when a request asks them to
    # Images (docs/images.md)
    max_images: int = 8  # image parts per request
    image_pixels_low: int = 262_144  # pixel budget of detail "low" (512x512)
    image_pixels_auto: int = 589_824  # pixel budget of detail "auto" or none given (768x768)
    image_pixels_high: int = 1_048_576  # pixel budget of detail "high" (1024x1024)
    image_max_source_pixels: int = 40_000_000  # larger images are refused before decoding (bombs)
    image_max_bytes: int = 20 * MiB  # encoded size of one image: fetched, data URL or file
    image_fetch_http: bool = True  # fetch plain http: URLs too (https: always)
    image_allow_hosts: tuple[str, ...] = ()  # if set, fetch only from these hosts ("*.example.com" ok)
    image_deny_hosts: tuple[str, ...] = ()  # never fetch from these hosts
    image_private_hosts: tuple[str, ...] = ()  # hosts allowed to resolve to loopback/private addresses
    image_media_dir: str | None = None  # folder that file: URLs may read from; None refuses file:
    image_connect_timeout_s: float = 5.0
    image_fetch_timeout_s: float = 20.0  # whole fetch: DNS, connect, redirects, body
    image_max_redirects: int = 3
    image_cache_entries: int = 64  # decoded images kept by content hash
    vision_cache_entries: int = 32  # vision-encoder outputs kept by content hash (embedded engine)
    # Operations
    heap_trim_interval_s: float = 5.0  # give freed heap memory back to the OS this often (glibc; 0: never)
    shutdown_grace_s: float = 30.0  # on SIGTERM: stop accepting, let running requests finish this long
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for log collectors
    playground: bool = True  # serve the playground page at /playground/

    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    def check(self) -> None:
        """Refuse settings that are contradictory or unsafe."""
        positive = ("port", "max_batch_size", "prefill_chunk", "max_body_bytes", "max_messages", "max_content_parts",
                    "max_message_chars", "max_n",
                    "max_stop", "max_queue", "image_pixels_low", "image_pixels_auto", "image_pixels_high",
                    "image_max_source_pixels", "image_max_bytes", "image_connect_timeout_s",
                    "image_fetch_timeout_s", "max_tools", "max_schema_bytes", "max_schema_depth",
                    "header_timeout_s", "body_timeout_s", "max_header_bytes", "keepalive_timeout_s",
                    "grammar_budget_s", "grammar_memory_bytes", "grammar_workers", "max_optional_properties")
        for key in positive:
            if getattr(self, key) <= 0:
                raise SettingsError(f"{key} must be positive")
        if self.session_idle_timeout_s <= 0 or self.session_busy_timeout_s < 0:
            raise SettingsError("session_idle_timeout_s must be > 0 and session_busy_timeout_s >= 0")
        for key in ("sglang_port", "sglang_startup_timeout_s", "sglang_connect_timeout_s",
                    "sglang_read_timeout_s", "sglang_retry_s"):
            if getattr(self, key) <= 0:
                raise SettingsError(f"{key} must be positive")
        if self.engine == "sglang" and not self.sglang_url and not self.launch:
            raise SettingsError("engine sglang needs sglang_url (--sglang-url URL) or launch (--launch)")
        if self.sglang_health_interval_s < 0:
            raise SettingsError("sglang_health_interval_s must be >= 0 (0 = no probes)")
        if self.shutdown_grace_s < 0 or self.heap_trim_interval_s < 0:
            raise SettingsError("shutdown_grace_s and heap_trim_interval_s must be >= 0")
        if self.queue_timeout_s <= 0 or self.threads < 0:
            raise SettingsError("threads must be >= 0 and queue_timeout_s > 0")
        for key in ("max_concurrent_per_key", "requests_per_minute", "tokens_per_minute", "max_images",
                    "image_max_redirects", "image_cache_entries", "vision_cache_entries",
                    "grammar_cache_entries", "prefix_cache_bytes", "max_logit_bias"):
            if getattr(self, key) < 0:
                raise SettingsError(f"{key} must be >= 0")
        if self.image_media_dir is not None and not Path(self.image_media_dir).expanduser().is_dir():
            raise SettingsError(f"image_media_dir {self.image_media_dir!r} is not a folder")
        if self.max_n > self.max_batch_size:  # n choices decode together in one batch
            raise SettingsError(f"max_n ({self.max_n}) must not exceed max_batch_size ({self.max_batch_size})")
        if not 0 <= self.max_top_logprobs <= 20:
            raise SettingsError("max_top_logprobs must be within 0..20")
        for key in ("context_length", "max_tokens_limit", "default_max_tokens", "prompt_truncate_len"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise SettingsError(f"{key} must be positive when set")
        if not 0 <= self.tool_call_end_probability < 1:
            raise SettingsError("tool_call_end_probability must be within [0, 1)")
        if not 0 <= self.default_temperature <= 2:
            raise SettingsError("default_temperature must be within 0..2")
        if not 0 < self.default_top_p <= 1:
            raise SettingsError("default_top_p must be within (0, 1]")
        if not self.api_keys and not self.allow_unauthenticated and not is_loopback(self.host):
            raise SettingsError(
                f"refusing to serve {self.host} without API keys: set api_keys (--api-key) "
                "or pass --allow-unauthenticated")
        if set(self.admin_keys) & set(self.api_keys):
            raise SettingsError("an admin key must not also be an API key")


class SettingsError(Exception):
    pass


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_FIELDS = {name: field for name, field in zip(Settings.__struct_fields__, msgspec.structs.fields(Settings),
                                                strict=True)}


# Keys that hold lists: comma-separated in the environment, repeatable (or comma-separated) as flags.
_LIST_KEYS = frozenset(name for name, field in _FIELDS.items() if typing.get_origin(field.type) is tuple)


def _split(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        raw = environ.get(f"LODESTAR_{name.upper()}")
        if name == "api_keys" and raw is None:
            raw = environ.get("LODESTAR_API_KEY")
        if raw is None:
            continue
        values[name] = _split(raw) if name in _LIST_KEYS else raw
    return values


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    for name, field in _FIELDS.items():
        if name == "api_keys":
            parser.add_argument("--api-key", dest="api_keys", action="append", help="Bearer key (repeatable)")
        elif name in _LIST_KEYS:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action="append",
                                help="repeatable, or comma-separated")
        elif field.type is bool:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_const", const=True)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
                  config_file: str | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    cli = {k: v for k, v in vars(args).items() if v is not None and k in _FIELDS} if args else {}
    for name in _LIST_KEYS & cli.keys() - {"api_keys"}:
        cli[name] = [item for value in cli[name] for item in _split(value)]
    path = (getattr(args, "config", None) if args else None) or config_file or environ.get("LODESTAR_CONFIG")
    merged: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                merged.update(tomllib.load(f))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
    merged.update(_from_env(environ))
    merged.update(cli)
    return build_settings(merged)


def build_settings(values: Mapping[str, Any]) -> Settings:
    values = dict(values)
    if isinstance(values.get("api_keys"), str):
        values["api_keys"] = [values["api_keys"]]
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {exc}") from exc
    settings.check()
    return settings
