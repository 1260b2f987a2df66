"""Where the settings come from: defaults <- TOML file <- LODESTAR_* environment <- command-line flags.

Every setting has one flat key, the name it has always had: the environment variable LODESTAR_<FLAT_KEY>,
the flag --<flat-key-with-dashes> and a top-level TOML key. A TOML file may instead use the section's table
([images] max_bytes = ...). Values are gathered by flat key, then placed in their sections and converted
(core/settings.py declares the sections and their ranges).
"""

from __future__ import annotations

import argparse
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from core.settings import Settings, SettingsError

SECTIONS: dict[str, type[msgspec.Struct]] = {
    name: typing.get_type_hints(Settings)[name] for name in Settings.__struct_fields__}

# The flat keys that differ from their field's name: section -> {field: flat key}.
_RENAMED = {
    "sglang": {f: f"sglang_{f}" for f in ("url", "api_key", "python", "launch_args", "port", "startup_timeout_s",
                                          "connect_timeout_s", "read_timeout_s", "retry_s", "health_interval_s")},
    "sessions": {"path": "sessions_path", "idle_timeout_s": "session_idle_timeout_s",
                 "busy_timeout_s": "session_busy_timeout_s", "continuation": "session_continuation"},
    "store": {"url": "store", "timeout_s": "store_timeout_s", "pool_size": "store_pool_size"},
    "reasoning": {"effort": "reasoning_effort"},
    "images": {"allow_http": "image_fetch_http", **{f: f"image_{f}" for f in (
        "pixels_low", "pixels_auto", "pixels_high", "max_source_pixels", "max_bytes", "allow_hosts", "deny_hosts",
        "private_hosts", "media_dir", "connect_timeout_s", "fetch_timeout_s", "max_redirects", "cache_entries")}},
}

# flat key -> (section, field), in the order of the sections and their fields
FLAT_KEYS: dict[str, tuple[str, str]] = {
    _RENAMED.get(section, {}).get(name, name): (section, name)
    for section, struct in SECTIONS.items() for name in struct.__struct_fields__}
assert len(FLAT_KEYS) == sum(len(struct.__struct_fields__) for struct in SECTIONS.values()), "flat keys collide"
_FLAT_OF = {place: flat for flat, place in FLAT_KEYS.items()}


def _field_type(flat: str) -> Any:
    section, name = FLAT_KEYS[flat]
    return typing.get_type_hints(SECTIONS[section], include_extras=True)[name]


# Keys that hold lists: comma-separated in the environment, repeatable (or comma-separated) as flags.
_LIST_KEYS = frozenset(flat for flat in FLAT_KEYS if typing.get_origin(_field_type(flat)) is tuple)
_BOOL_KEYS = frozenset(flat for flat in FLAT_KEYS if _field_type(flat) is bool)


def _split(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in FLAT_KEYS:
        raw = environ.get(f"LODESTAR_{name.upper()}")
        if name == "api_keys" and raw is None:
            raw = environ.get("LODESTAR_API_KEY")
        if raw is None:
            continue
        values[name] = _split(raw) if name in _LIST_KEYS else raw
    return values


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML configuration file")
    for name in FLAT_KEYS:
        if name == "api_keys":
            parser.add_argument("--api-key", dest="api_keys", action="append", help="Bearer key (repeatable)")
        elif name in _LIST_KEYS:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action="append",
                                help="repeatable, or comma-separated")
        elif name in _BOOL_KEYS:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_const", const=True)
        else:
            parser.add_argument(f"--{name.replace('_', '-')}", dest=name)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None,
                  config_file: str | None = None) -> Settings:
    environ = os.environ if environ is None else environ
    cli = {k: v for k, v in vars(args).items() if v is not None and k in FLAT_KEYS} if args else {}
    for name in _LIST_KEYS & cli.keys() - {"api_keys"}:
        cli[name] = [item for value in cli[name] for item in _split(value)]
    path = (getattr(args, "config", None) if args else None) or config_file or environ.get("LODESTAR_CONFIG")
    merged: dict[str, Any] = {}
    if path:
        try:
            with open(path, "rb") as f:
                merged.update(_flatten(tomllib.load(f)))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
    merged.update(_from_env(environ))
    merged.update(cli)
    return build_settings(merged)


def _flatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """A TOML document's settings as flat keys: section tables ([images] max_bytes) and top-level flat keys
    (image_max_bytes) may be mixed."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if key in SECTIONS and key not in FLAT_KEYS and isinstance(value, Mapping):
            for name, item in value.items():
                if (key, name) not in _FLAT_OF:
                    raise SettingsError(f"unknown setting [{key}] {name}")
                flat[_FLAT_OF[key, name]] = item
        else:
            flat[key] = value
    return flat


def build_settings(values: Mapping[str, Any]) -> Settings:
    """Settings from flat keys (as the environment, the flags and the TOML file's top level name them)."""
    values = dict(values)
    if isinstance(values.get("api_keys"), str):
        values["api_keys"] = [values["api_keys"]]
    nested: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key not in FLAT_KEYS:
            raise SettingsError(f"unknown setting {key!r}")
        section, name = FLAT_KEYS[key]
        nested.setdefault(section, {})[name] = value
    try:
        settings = msgspec.convert(nested, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise SettingsError(f"invalid setting: {_flat_message(str(exc))}") from exc
    settings.check()
    return settings


def _flat_message(message: str) -> str:
    """msgspec's message with the setting's flat key in place of its path ("- at `$.images.max_bytes`")."""
    def flat(match: re.Match[str]) -> str:
        return f"- setting {_FLAT_OF.get((match[1], match[2]), match[1] + '.' + match[2])}"
    return re.sub(r"- at `\$\.(\w+)\.(\w+)`", flat, message)
