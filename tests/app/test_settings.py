"""Settings: defaults <- TOML file <- LODESTAR_* environment <- command-line flags, validated once."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from core.settings import Settings, SettingsError, add_flags, build_settings, load_settings


def settings_keys() -> tuple[str, ...]:
    """Every settings key: the fields of the Settings struct."""
    return Settings.__struct_fields__


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
    assert s.host == "127.0.0.1" and s.port == 8000
    assert s.api_keys == () and s.allow_unauthenticated is False
    assert s.model == "default" and s.engine == "embedded" and s.quantize == "int8"
    assert s.max_body_bytes == 32 * 1024 * 1024
    assert (s.header_timeout_s, s.body_timeout_s, s.max_header_bytes, s.keepalive_timeout_s) == (10.0, 60.0, 32768, 5.0)
    assert (s.max_n, s.max_stop, s.max_top_logprobs) == (8, 4, 20)
    assert s.max_queue == 64 and s.queue_timeout_s == 60.0
    assert s.context_length is None and s.default_max_tokens is None and s.max_tokens_limit is None
    assert s.default_temperature == 1.0 and s.default_top_p == 1.0
    assert s.confidence_score is False and s.log_level == "info"


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
    assert s.reasoning_effort == "medium" and s.prompted_thinking is False
    assert load_settings(flags("--prompted-thinking", "--reasoning-effort", "none"), environ={}).prompted_thinking


def test_settings_are_frozen() -> None:
    s = Settings()
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


def test_precedence_defaults_toml_env_cli(tmp_path: Path) -> None:
    config = toml(tmp_path, 'port = 9001\nmax_n = 3\nmax_stop = 2\nmodel = "from-toml"\n'
                           'log_level = "debug"\n')
    env = {"LODESTAR_CONFIG": config, "LODESTAR_MAX_N": "5", "LODESTAR_MODEL": "from-env"}
    s = load_settings(flags("--model", "from-cli"), environ=env)
    assert s.model == "from-cli"  # CLI beats env and TOML
    assert s.max_n == 5  # env beats TOML
    assert s.port == 9001 and s.max_stop == 2 and s.log_level == "debug"  # TOML beats defaults
    assert s.max_messages == Settings().max_messages  # untouched keys keep their default


def test_config_file_from_flag_and_argument(tmp_path: Path) -> None:
    config = toml(tmp_path, "max_queue = 7\n")
    assert load_settings(flags("--config", config), environ={}).max_queue == 7
    assert load_settings(None, environ={}, config_file=config).max_queue == 7
    # --config beats LODESTAR_CONFIG
    other = tmp_path / "other.toml"
    other.write_text("max_queue = 9\n")
    assert load_settings(flags("--config", config), environ={"LODESTAR_CONFIG": str(other)}).max_queue == 7


def test_values_from_strings_are_converted() -> None:
    env = {"LODESTAR_PORT": "8123", "LODESTAR_QUEUE_TIMEOUT_S": "2.5", "LODESTAR_CONFIDENCE_SCORE": "true",
           "LODESTAR_CONTEXT_LENGTH": "1024"}
    s = load_settings(flags("--max-body-bytes", "4096", "--confidence-score"), environ=env)
    assert s.port == 8123 and s.queue_timeout_s == 2.5 and s.context_length == 1024
    assert s.max_body_bytes == 4096 and s.confidence_score is True


def test_api_keys_from_env_comma_separated() -> None:
    s = load_settings(flags(), environ={"LODESTAR_API_KEY": " k1, k2 ,,k3 "})
    assert s.api_keys == ("k1", "k2", "k3")
    s = load_settings(flags(), environ={"LODESTAR_API_KEYS": "a,b"})
    assert s.api_keys == ("a", "b")


def test_api_keys_from_repeated_flag_replace_env() -> None:
    s = load_settings(flags("--api-key", "one", "--api-key", "two"), environ={"LODESTAR_API_KEY": "env"})
    assert s.api_keys == ("one", "two")


def test_api_keys_from_toml(tmp_path: Path) -> None:
    assert load_settings(None, environ={}, config_file=toml(tmp_path, 'api_keys = ["x", "y"]\n')).api_keys \
        == ("x", "y")
    assert load_settings(None, environ={}, config_file=toml(tmp_path, 'api_keys = "solo"\n')).api_keys \
        == ("solo",)


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.com"])
def test_non_loopback_host_without_keys_is_refused(host: str) -> None:
    with pytest.raises(SettingsError, match="without API keys"):
        load_settings(flags("--host", host), environ={})
    with pytest.raises(SettingsError, match="without API keys"):
        load_settings(flags(), environ={"LODESTAR_HOST": host})
    # either keys or an explicit opt-out make it acceptable
    assert load_settings(flags("--host", host, "--api-key", "k"), environ={}).host == host
    assert load_settings(flags("--host", host, "--allow-unauthenticated"), environ={}).host == host
    assert load_settings(flags("--host", host), environ={"LODESTAR_ALLOW_UNAUTHENTICATED": "1"}).host == host


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_host_without_keys_is_fine(host: str) -> None:
    assert load_settings(flags("--host", host), environ={}).host == host


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
    assert build_settings({"max_n": 2}).max_n == 2
    with pytest.raises(SettingsError, match="max_n"):
        build_settings({"max_n": -1})
