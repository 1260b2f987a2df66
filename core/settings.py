"""One frozen settings object in sections, each a Struct below; each package is handed only its own (the
scheduler its `scheduler`, the image loader its `images`, ...). Where the values come from (defaults <- TOML
file <- LODESTAR_* environment <- flags, by flat key) is core/config.py.

Ranges are msgspec Meta constraints on the fields; check() holds only what spans several settings. Every
field's comment is its documentation; docs/configuration.md lists them all.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

MiB = 1 << 20

Positive = Annotated[int, Meta(gt=0)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Count = Annotated[int, Meta(ge=0)]  # 0 allowed (often: off)
Seconds = Annotated[float, Meta(ge=0)]


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class ServerSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"  # address to bind
    port: Annotated[int, Meta(gt=0, lt=65536)] = 8000
    workers: Positive = 1  # server processes sharing the port (engine sglang only; docs/deployment.md)
    api_keys: tuple[str, ...] = ()  # Bearer keys; none = open server (loopback only)
    allow_unauthenticated: bool = False  # allow binding a non-loopback address without keys
    admin_keys: tuple[str, ...] = ()  # Bearer keys for /v1/admin/*; none = the admin routes answer 403
    data_dir: str = "~/.local/share/lodestar"  # converted weights and other state
    heap_trim_interval_s: Seconds = 5.0  # give freed heap memory back to the OS this often (glibc; 0: never)
    shutdown_grace_s: Seconds = 30.0  # on SIGTERM: stop accepting, let running requests finish this long
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for log collectors
    playground: bool = True  # serve the playground page at /playground/


class LimitSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Per API key (without api_keys: for all clients together); 0 turns a limit off."""

    max_concurrent_per_key: Count = 64  # requests in flight
    requests_per_minute: Count = 0
    tokens_per_minute: Count = 0  # prompt + completion tokens of finished requests


class BackendSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    model: str = "default"  # catalog id or alias, .gguf file, or Hugging Face folder
    engine: Literal["embedded", "sglang"] = "embedded"  # sglang: SGLang workers on GPUs (docs/deployment.md)
    # Linear layers' weights: auto = the format and library fastest on this CPU (engines/embedded/kernels.py)
    quantize: Literal["auto", "int8", "bf16", "none"] = "auto"
    context_length: Positive | None = None  # cap below the model's own context length


class SchedulerSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The embedded engine's batch."""

    threads: Count = 0  # torch threads for the engine's scheduler thread; 0 = one per core
    max_batch_size: Positive = 8  # sequences decoded together
    prefill_chunk: Positive = 256  # prompt tokens per prefill step between decode steps
    max_queue: Positive = 64  # requests waiting for a batch slot before 429
    queue_timeout_s: PositiveFloat = 60.0  # longest wait for a batch slot before 503
    prefix_cache_bytes: Count = 1 << 30  # KV of cached prompt prefixes kept for reuse; 0 = off
    vision_cache_entries: Count = 32  # vision-encoder outputs kept by content hash
    grammar_cache_entries: Count = 128  # compiled grammars kept by content hash
    # most tokens prompt lookup drafts per choice and step for speculative decoding; 0 = off
    lookup_tokens: Annotated[int, Meta(ge=0, le=64)] = 8


class SGLangSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The SGLang engine (docs/deployment.md)."""

    url: tuple[str, ...] = ()  # SGLang workers, or one SGLang model gateway; repeat for several
    api_key: str | None = None  # the key the workers were started with (--api-key), if any
    tokenizer: str | None = None  # folder with the model's tokenizer and chat template; None = the model's
    launch: bool = False  # start sglang.launch_server as a child process (instead of url)
    python: str | None = None  # interpreter that has SGLang installed; None = Lodestar's own
    launch_args: tuple[str, ...] = ()  # extra sglang.launch_server arguments, e.g. --tp-size=2
    port: Annotated[int, Meta(gt=0, lt=65536)] = 30000  # port of the launched SGLang server (on 127.0.0.1)
    startup_timeout_s: PositiveFloat = 1800.0  # wait for the workers to answer at start-up
    connect_timeout_s: PositiveFloat = 5.0
    read_timeout_s: PositiveFloat = 300.0  # longest silence of a worker within one request
    retry_s: PositiveFloat = 10.0  # a worker that failed stays out of rotation this long
    health_interval_s: Seconds = 10.0  # /health_generate probes of every worker; 0 = none


class ConnectionSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """How long and how much a client may take to send a request (app/transport.py)."""

    header_timeout_s: PositiveFloat = 10.0  # request line + headers must arrive within this; else 408 and close
    body_timeout_s: PositiveFloat = 60.0  # the whole body must arrive within this after the headers; else 408
    max_header_bytes: Positive = 32_768  # request line + headers; more is 431 and close
    keepalive_timeout_s: PositiveFloat = 5.0  # an idle keep-alive connection is closed after this
    # a connection is closed after its Nth response: kept-alive clients are spread again over the processes
    # of --workers (the kernel places a new connection) and the hosts behind a load balancer
    keepalive_max_requests: Positive = 100
    max_body_bytes: Positive = 32 * MiB  # larger bodies get 413 (a larger Content-Length: before it is read)


class RequestSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Bounds and defaults of one request's fields (OpenAI's defaults unless set)."""

    max_messages: Positive = 2048
    max_content_parts: Positive = 256  # parts of one message's content array
    max_message_chars: Positive = 1_048_576  # characters of one message's text (all its text parts)
    max_n: Positive = 8
    max_stop: Positive = 4
    max_top_logprobs: Annotated[int, Meta(ge=0, le=20)] = 20
    max_logit_bias: Count = 300  # entries of a request's logit_bias (OpenAI's limit); 0 refuses any entry
    max_tokens_limit: Positive | None = None  # upper bound for max_tokens; None = the context length
    default_temperature: Annotated[float, Meta(ge=0, le=2)] = 1.0
    default_top_p: Annotated[float, Meta(gt=0, le=1)] = 1.0
    default_max_tokens: Positive | None = None  # None: the rest of the context
    prompt_truncate_len: Positive | None = None  # the request field's default; None: no truncation
    confidence_score: bool = False  # always add the confidence_score extension


class ToolSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Tools and structured output (docs/tools.md)."""

    max_tools: Positive = 128  # tools per request
    max_schema_bytes: Positive = 65_536  # all tool and response_format schemas of a request, as JSON
    max_schema_depth: Positive = 32  # nesting depth of one schema
    max_optional_properties: Positive = 256  # optional properties of one schema object (llguidance: ~500)
    # after a complete tool call, end the reply when the model gives ending at least this probability
    # (embedded engine; 0: only when ending is its likeliest token, as sampling would)
    tool_call_end_probability: Annotated[float, Meta(ge=0, lt=1)] = 0.0
    # tool_choice "auto" after tool results: also read a reply of bare JSON as a call, and leave "none" free
    # (small models then repeat the call they made instead of answering; docs/tools.md#answering-a-tool-result)
    bare_calls_after_tool_results: bool = False
    # tool_choice "auto" after tool results: show the tools to the template again ("show"), leave them out
    # ("hide": small models then answer from the result instead of retyping the call), or as the model's
    # catalog entry says ("model": hide for the default 0.5B model, show otherwise; docs/tools.md)
    tools_after_tool_results: Literal["model", "show", "hide"] = "model"
    # Checking a request's schemas (a child process; docs/security.md): over budget -> 400 schema_too_complex
    grammar_budget_s: PositiveFloat = 2.0  # time for all schema checks of one request
    grammar_memory_bytes: Positive = 512 * MiB  # address space of one checking process
    grammar_workers: Positive = 2  # checking processes at once


class SessionSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """X-Session-ID sessions (docs/sessions.md)."""

    # SQLite file of the state (transcripts, usage) without a store URL; None = <data_dir>/sessions.sqlite3
    path: str | None = None
    idle_timeout_s: PositiveFloat = 86_400.0  # a session unused for this long is forgotten
    busy_timeout_s: Seconds = 30.0  # wait of a request for its session's running request before 409
    # "exact": a continued session's prompt is its stored token ids + the new messages (cache always hits);
    # "template": the whole conversation is rendered again by the template each turn
    continuation: Literal["exact", "template"] = "exact"


class StoreSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where the state every process shares lives (docs/deployment.md#state)."""

    # postgresql://user:password@host/db for many hosts; None: the SQLite file of sessions_path (one host)
    url: str | None = None
    timeout_s: PositiveFloat = 5.0  # a store call that takes longer counts as the store being unreachable
    pool_size: Positive = 8  # PostgreSQL connections per process (besides the one that keeps holds)


class ReasoningSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """docs/reasoning.md"""

    # effort of requests that do not say (reasoning models), and of `reasoning: {enabled: true}`
    effort: Literal["xhigh", "high", "medium", "low", "minimal", "none"] = "medium"
    prompted_thinking: bool = False  # models that do not reason think in <think> when a request asks them to


class ImageSettings(_Section, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Image inputs (docs/images.md): what may be fetched or read, and how large."""

    max_images: Count = 8  # image parts per request
    pixels_low: Positive = 262_144  # pixel budget of detail "low" (512x512)
    pixels_auto: Positive = 589_824  # pixel budget of detail "auto" or none given (768x768)
    pixels_high: Positive = 1_048_576  # pixel budget of detail "high" (1024x1024)
    max_source_pixels: Positive = 40_000_000  # larger images are refused before decoding (bombs)
    max_bytes: Positive = 20 * MiB  # encoded size of one image: fetched, data URL or file
    allow_http: bool = True  # fetch plain http: URLs too (https: always)
    allow_hosts: tuple[str, ...] = ()  # if set, fetch only from these hosts ("*.example.com" ok)
    deny_hosts: tuple[str, ...] = ()  # never fetch from these hosts
    # hosts (names or IP literals as written in the URL) allowed to resolve to loopback/private addresses
    private_hosts: tuple[str, ...] = ()
    media_dir: str | None = None  # folder that file: URLs may read from; None refuses file:
    connect_timeout_s: PositiveFloat = 5.0
    fetch_timeout_s: PositiveFloat = 20.0  # whole fetch: DNS, connect, redirects, body
    max_redirects: Count = 3
    cache_entries: Count = 64  # decoded images kept by content hash


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    limits: LimitSettings = msgspec.field(default_factory=LimitSettings)
    backend: BackendSettings = msgspec.field(default_factory=BackendSettings)
    scheduler: SchedulerSettings = msgspec.field(default_factory=SchedulerSettings)
    sglang: SGLangSettings = msgspec.field(default_factory=SGLangSettings)
    connections: ConnectionSettings = msgspec.field(default_factory=ConnectionSettings)
    requests: RequestSettings = msgspec.field(default_factory=RequestSettings)
    tools: ToolSettings = msgspec.field(default_factory=ToolSettings)
    sessions: SessionSettings = msgspec.field(default_factory=SessionSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    reasoning: ReasoningSettings = msgspec.field(default_factory=ReasoningSettings)
    images: ImageSettings = msgspec.field(default_factory=ImageSettings)

    def data_path(self) -> Path:
        return Path(self.server.data_dir).expanduser()

    def check(self) -> None:
        """Refuse settings that contradict each other or are unsafe (each range is on its field)."""
        server = self.server
        if self.backend.engine == "sglang" and not self.sglang.url and not self.sglang.launch:
            raise SettingsError("engine sglang needs sglang_url (--sglang-url URL) or launch (--launch)")
        if server.workers > 1 and (self.backend.engine != "sglang" or self.sglang.launch):
            raise SettingsError(
                f"workers {server.workers} needs engine sglang with workers it does not launch: the embedded "
                "engine runs inside the server process (and --launch starts one SGLang worker per process), "
                "so each serves from one process; run more hosts instead")
        media_dir = self.images.media_dir
        if media_dir is not None and not Path(media_dir).expanduser().is_dir():
            raise SettingsError(f"image_media_dir {media_dir!r} is not a folder")
        if self.requests.max_n > self.scheduler.max_batch_size:  # n choices decode together in one batch
            raise SettingsError(f"max_n ({self.requests.max_n}) must not exceed max_batch_size "
                                f"({self.scheduler.max_batch_size})")
        if not server.api_keys and not server.allow_unauthenticated and not is_loopback(server.host):
            raise SettingsError(
                f"refusing to serve {server.host} without API keys: set api_keys (--api-key) "
                "or pass --allow-unauthenticated")
        url = self.store.url
        if url is not None and not url.startswith(("postgresql://", "postgres://", "sqlite:")):
            raise SettingsError(f"store {url!r}: expected postgresql://... or sqlite:PATH")
        if set(server.admin_keys) & set(server.api_keys):
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
