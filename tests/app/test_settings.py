"""Settings: defaults <- TOML file <- LODESTAR_* environment <- command-line flags, validated once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.config import FLAT_KEYS, SECTIONS, add_flags, build_settings, load_settings
from core.settings import Settings, SettingsError


def settings_keys() -> list[str]:
    """Every setting's flat key: its environment variable, flag and top-level TOML name."""
    return list(FLAT_KEYS)


def value(s: Settings, key: str) -> object:
    """A setting by its flat key."""
    section, name = FLAT_KEYS[key]
    return getattr(getattr(s, section), name)


def flags(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    return parser.parse_args(list(argv))


def toml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "lodestar.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    s = load_settings(flags(), environ={})
    assert s == Settings()
    assert s.server.host == "127.0.0.1" and s.server.port == 8000
    assert s.server.api_keys == () and s.server.allow_unauthenticated is False
    assert s.backend.model == "default" and s.backend.engine == "embedded" and s.backend.quantize == "auto"
    connections = s.connections
    assert connections.max_body_bytes == 32 * 1024 * 1024
    assert (connections.header_timeout_s, connections.body_timeout_s, connections.max_header_bytes,
            connections.keepalive_timeout_s) == (10.0, 60.0, 32768, 5.0)
    assert (s.requests.max_n, s.requests.max_stop, s.requests.max_top_logprobs) == (8, 4, 20)
    assert s.scheduler.max_queue == 64 and s.scheduler.queue_timeout_s == 60.0
    assert s.backend.context_length is None and s.requests.default_max_tokens is None
    assert s.requests.max_tokens_limit is None
    assert s.requests.default_temperature == 1.0 and s.requests.default_top_p == 1.0
    assert s.requests.confidence_score is False and s.server.log_level == "info"


def test_every_key_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser)
    dests = {action.dest for action in parser._actions}
    assert set(settings_keys()) <= dests


def test_every_key_is_documented_with_its_variable_and_flag() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in docs.splitlines() if line.startswith("| `")}
    assert set(settings_keys()) <= set(rows), set(settings_keys()) - set(rows)
    parser = argparse.ArgumentParser()
    add_flags(parser)
    flag_of = {action.dest: action.option_strings[0] for action in parser._actions if action.option_strings}
    for key in settings_keys():
        assert f"LODESTAR_{key.upper()}" in rows[key] and flag_of[key] in rows[key], key


def test_reasoning_defaults() -> None:
    s = Settings()
    assert s.reasoning.effort == "medium" and s.reasoning.prompted_thinking is False
    flagged = load_settings(flags("--prompted-thinking", "--reasoning-effort", "none"), environ={})
    assert flagged.reasoning.prompted_thinking and flagged.reasoning.effort == "none"


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.server = s.server  # type: ignore[misc]
    with pytest.raises(AttributeError):
        s.server.port = 1  # type: ignore[misc]


def test_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    config = toml(tmp_path, 'port = 9001\nmax_n = 3\nmax_stop = 2\nmodel = "from-toml"\n'
                           'log_level = "debug"\n')
    env = {"LODESTAR_CONFIG": config, "LODESTAR_MAX_N": "5", "LODESTAR_MODEL": "from-env"}
    s = load_settings(flags("--model", "from-cli"), environ=env)
    assert s.backend.model == "from-cli"  # CLI beats env and TOML
    assert s.requests.max_n == 5  # env beats TOML
    assert s.server.port == 9001 and s.requests.max_stop == 2 and s.server.log_level == "debug"  # TOML beats defaults
    assert s.requests.max_messages == Settings().requests.max_messages  # untouched keys keep their default


def test_config_file_from_flag_and_argument(tmp_path: Path) -> None:
    config = toml(tmp_path, "max_queue = 7\n")
    assert load_settings(flags("--config", config), environ={}).scheduler.max_queue == 7
    assert load_settings(None, environ={}, config_file=config).scheduler.max_queue == 7
    # --config beats LODESTAR_CONFIG
    other = tmp_path / "other.toml"
    other.write_text("max_queue = 9\n")
    assert load_settings(flags("--config", config), environ={"LODESTAR_CONFIG": str(other)}).scheduler.max_queue == 7


def test_values_from_strings_are_converted() -> None:
    env = {"LODESTAR_PORT": "8123", "LODESTAR_QUEUE_TIMEOUT_S": "2.5", "LODESTAR_CONFIDENCE_SCORE": "true",
           "LODESTAR_CONTEXT_LENGTH": "1024"}
    s = load_settings(flags("--max-body-bytes", "4096", "--confidence-score"), environ=env)
    assert s.server.port == 8123 and s.scheduler.queue_timeout_s == 2.5 and s.backend.context_length == 1024
    assert s.connections.max_body_bytes == 4096 and s.requests.confidence_score is True


def test_api_keys_from_env_comma_separated() -> None:
    s = load_settings(flags(), environ={"LODESTAR_API_KEY": " k1, k2 ,,k3 "})
    assert s.server.api_keys == ("k1", "k2", "k3")
    s = load_settings(flags(), environ={"LODESTAR_API_KEYS": "a,b"})
    assert s.server.api_keys == ("a", "b")


def test_api_keys_from_repeated_flag_replace_env() -> None:
    s = load_settings(flags("--api-key", "one", "--api-key", "two"), environ={"LODESTAR_API_KEY": "env"})
    assert s.server.api_keys == ("one", "two")


def test_api_keys_from_toml(tmp_path: Path) -> None:
    assert load_settings(None, environ={}, config_file=toml(tmp_path, 'api_keys = ["x", "y"]\n')).server.api_keys \
        == ("x", "y")
    assert load_settings(None, environ={}, config_file=toml(tmp_path, 'api_keys = "solo"\n')).server.api_keys \
        == ("solo",)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_non_loopback_host_without_keys_is_refused(host: str) -> None:
    with pytest.raises(SettingsError, match="without API keys"):
        load_settings(flags("--host", host), environ={})
    with pytest.raises(SettingsError, match="without API keys"):
        load_settings(flags(), environ={"LODESTAR_HOST": host})
    # either keys or an explicit opt-out make it acceptable
    assert load_settings(flags("--host", host, "--api-key", "k"), environ={}).server.host == host
    assert load_settings(flags("--host", host, "--allow-unauthenticated"), environ={}).server.host == host
    assert load_settings(flags("--host", host), environ={"LODESTAR_ALLOW_UNAUTHENTICATED": "1"}).server.host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_host_without_keys_is_fine(host: str) -> None:
    assert load_settings(flags("--host", host), environ={}).server.host == host


@pytest.mark.parametrize(("key", "value"), [
    ("port", "abc"),
    ("port", "0"),
    ("max_batch_size", "0"),
    ("prefill_chunk", "-1"),
    ("max_body_bytes", "0"),
    ("header_timeout_s", "0"),
    ("body_timeout_s", "-1"),
    ("max_header_bytes", "0"),
    ("keepalive_timeout_s", "0"),
    ("keepalive_max_requests", "0"),
    ("max_messages", "0"),
    ("max_n", "0"),
    ("max_stop", "0"),
    ("max_top_logprobs", "21"),
    ("max_logit_bias", "-1"),
    ("max_queue", "-1"),
    ("queue_timeout_s", "0"),
    ("threads", "-2"),
    ("quantize", "fp4"),
    ("engine", "vllm"),
    ("log_level", "loud"),
    ("context_length", "0"),
    ("max_tokens_limit", "-5"),
    ("default_max_tokens", "0"),
    ("default_temperature", "2.5"),
    ("default_top_p", "0"),
    ("default_top_p", "1.5"),
])
def test_invalid_values_raise_settings_error_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(SettingsError, match=key):
        load_settings(flags(), environ={f"LODESTAR_{key.upper()}": value})
    with pytest.raises(SettingsError, match=key):
        load_settings(flags(f"--{key.replace('_', '-')}", value), environ={})


def test_invalid_toml_value_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="max_n"):
        load_settings(None, environ={}, config_file=toml(tmp_path, 'max_n = "many"\n'))


def test_unknown_toml_key_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="max_tokenz"):
        load_settings(None, environ={}, config_file=toml(tmp_path, "max_tokenz = 5\n"))


def test_unreadable_or_broken_config_file(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(None, environ={}, config_file=str(tmp_path / "missing.toml"))
    with pytest.raises(SettingsError, match="cannot read config file"):
        load_settings(None, environ={}, config_file=toml(tmp_path, "port = = 3\n"))


def test_unrelated_environment_is_ignored() -> None:
    s = load_settings(flags(), environ={"PORT": "1", "LODESTAR_NOT_A_KEY": "x", "HOST": "0.0.0.0"})
    assert s == Settings()


def test_build_settings_validates_too() -> None:
    assert build_settings({"max_n": 2}).requests.max_n == 2
    with pytest.raises(SettingsError, match="max_n"):
        build_settings({"max_n": -1})


# -- sections and the flat names -------------------------------------------------------------------------


def sample(key: str) -> tuple[str, object]:
    """A valid non-default value for a key: as the environment and a flag spell it, and as it is kept."""
    current = value(Settings(), key)
    if isinstance(current, bool):
        return "true", True  # a flag can only set a bool (store_const)
    if isinstance(current, tuple):
        return "a.example,b.example", ("a.example", "b.example")
    if isinstance(current, float):
        return "0.5", 0.5
    if isinstance(current, int):
        return "3", 3
    literal = {"engine": ("embedded", "embedded"), "quantize": ("none", "none"), "log_level": ("debug", "debug"),
               "log_format": ("json", "json"), "tools_after_tool_results": ("hide", "hide"),
               "session_continuation": ("template", "template"), "reasoning_effort": ("low", "low")}
    if key in literal:
        return literal[key]
    if key in ("context_length", "max_tokens_limit", "default_max_tokens", "prompt_truncate_len"):
        return "3", 3
    if key == "image_media_dir":
        return "/tmp", "/tmp"
    assert current is None or isinstance(current, str), key
    return "some-value", "some-value"


def test_every_old_flat_name_still_sets_its_field(tmp_path: Path) -> None:
    """Each of the 87 settings by its old flat name (and the 6 added since: workers, the store, prompt
    lookup), in all three places: environment, flag, top-level TOML."""
    assert len(FLAT_KEYS) == 87 + 6
    for key, (section, name) in FLAT_KEYS.items():
        raw, expected = sample(key)
        if key == "host":
            raw, expected = "127.0.0.2", "127.0.0.2"
        if key == "store":
            raw, expected = "sqlite:/tmp/state.sqlite3", "sqlite:/tmp/state.sqlite3"
        if key in ("max_n", "max_batch_size"):
            raw, expected = "8", 8  # max_n may not exceed max_batch_size
        extra_env = {"LODESTAR_SGLANG_URL": "http://127.0.0.1:1"} if key == "engine" else {}
        context = {"LODESTAR_ENGINE": "sglang", "LODESTAR_SGLANG_URL": "http://127.0.0.1:1"} \
            if key == "workers" else {}  # several processes serve SGLang workers only
        from_env = load_settings(flags(), environ={f"LODESTAR_{key.upper()}": raw, **extra_env, **context})
        assert value(from_env, key) == expected, key
        flag = f"--{key.replace('_', '-')}"
        argv = [flag] if isinstance(expected, bool) else [flag, raw]
        if key == "api_keys":  # one key per --api-key: a key may hold a comma
            argv = ["--api-key", "a.example", "--api-key", "b.example"]
        assert value(load_settings(flags(*argv), environ=context), key) == expected, key
        toml_value = {True: "true", False: "false"}.get(expected) if isinstance(expected, bool) else None
        if toml_value is None:
            toml_value = (f"[{', '.join(repr(v) for v in expected)}]" if isinstance(expected, tuple)
                          else repr(expected) if not isinstance(expected, str) else f'"{expected}"')
        config = toml(tmp_path, f"{key} = {toml_value}\n")
        assert value(load_settings(None, environ=context, config_file=config), key) == expected, key
        assert getattr(getattr(from_env, section), name) == expected


def test_a_toml_file_may_use_the_sections(tmp_path: Path) -> None:
    sections = toml(tmp_path, '[images]\nmax_bytes = 1024\nallow_hosts = ["img.example"]\n'
                              "[scheduler]\nmax_batch_size = 4\n[requests]\nmax_n = 4\n[sglang]\nport = 31000\n")
    s = load_settings(None, environ={}, config_file=sections)
    assert s.images.max_bytes == 1024 and s.images.allow_hosts == ("img.example",)
    assert s.scheduler.max_batch_size == 4 and s.sglang.port == 31000
    mixed = toml(tmp_path, 'image_max_bytes = 2048\nmax_n = 2\n[reasoning]\neffort = "low"\n')
    s = load_settings(None, environ={"LODESTAR_IMAGE_MAX_BYTES": "4096"}, config_file=mixed)
    assert s.images.max_bytes == 4096 and s.requests.max_n == 2 and s.reasoning.effort == "low"
    with pytest.raises(SettingsError, match=r"\[images\] max_bytez"):
        load_settings(None, environ={}, config_file=toml(tmp_path, "[images]\nmax_bytez = 1\n"))
    with pytest.raises(SettingsError, match="image_max_bytes"):  # an error names the flat key
        load_settings(None, environ={}, config_file=toml(tmp_path, "[images]\nmax_bytes = 0\n"))


def test_each_section_holds_its_own_fields_once() -> None:
    fields = [(section, name) for section, struct in SECTIONS.items() for name in struct.__struct_fields__]
    assert sorted(fields) == sorted(FLAT_KEYS.values())
    assert set(SECTIONS) == {"server", "limits", "backend", "scheduler", "sglang", "connections", "requests",
                             "tools", "sessions", "store", "reasoning", "images"}


def test_several_workers_need_sglang_workers_the_server_does_not_launch() -> None:
    for settings in ({"workers": 2}, {"workers": 2, "engine": "sglang", "launch": True}):
        with pytest.raises(SettingsError, match="workers 2 needs engine sglang"):
            build_settings(settings)
    settings = build_settings({"workers": 2, "engine": "sglang", "sglang_url": ["http://127.0.0.1:1"]})
    assert settings.server.workers == 2


def test_a_store_url_must_name_its_backend() -> None:
    with pytest.raises(SettingsError, match="expected postgresql://"):
        build_settings({"store": "mysql://db/lodestar"})
    assert build_settings({"store": "postgresql://u@db/lodestar"}).store.url == "postgresql://u@db/lodestar"
