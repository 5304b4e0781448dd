"""The agent's typed settings: defaults, then a TOML file, then environment, then CLI flags."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

ENV_PREFIX = "OUTPOST_AGENT_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
MAX_PARALLEL = 64  # sequences per model context


class SettingsError(Exception):
    """The configuration is invalid; the message names the file, key or variable."""


@dataclass(frozen=True)
class ModelSettings:
    """One model the agent serves."""

    path: Path
    alias: str
    context_length: int = 4096
    gpu_layers: int = 0
    threads: int = 0  # 0: one per CPU core
    batch_size: int = 512
    queue_depth: int = 16
    parallel: int = 4  # requests decoded together (continuous batching); each has context_length
    # LoRA adapters (GGUF) a request may name as "alias:name", by name
    adapters: tuple[tuple[str, Path], ...] = ()
    sha256: str = ""  # known digest of a verified registry model: not hashed again at load


@dataclass(frozen=True)
class AgentSettings:
    models: tuple[ModelSettings, ...] = ()
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8080
    max_tokens_limit: int = 2048
    default_max_tokens: int = 256
    max_request_bytes: int = 1024 * 1024
    max_stop_sequences: int = 8
    log_level: str = "INFO"
    # Managed mode (`outpost-agent run`): where the agent keeps its identity and state, and
    # how it reaches the control plane the first time.
    state_dir: Path | None = None
    control_plane: str = ""
    join_token: str = ""
    ca_fingerprint: str = ""
    insecure_control: bool = False
    telemetry_interval_s: int = 5  # managed mode: how often a health sample is taken
    # Managed mode: HOST:PORT where the site's other agents reach this one's gRPC port to
    # fetch verified models from it (empty: it does not serve peers).
    peer_address: str = ""
    # Managed mode: HOST:PORT where the control plane's gateway and the site's other agents
    # reach this one's OpenAI HTTP port with forwarded requests (empty: it takes none).
    inference_address: str = ""
    download_rate_limit: int = 0  # bytes per second for model downloads; 0: unlimited
    # Managed mode: where the site's federated fine-tuning datasets lie, one directory each,
    # named as the admin names them in a job (default: STATE_DIR/datasets). Read, never sent.
    datasets_dir: Path | None = None


_INT_FIELDS = {
    "telemetry_interval_s",
    "download_rate_limit",
    "grpc_port",
    "http_port",
    "max_tokens_limit",
    "default_max_tokens",
    "max_request_bytes",
    "max_stop_sequences",
}
_PATH_FIELDS = {"state_dir", "datasets_dir"}
_BOOL_FIELDS = {"insecure_control"}
_MODEL_INT_FIELDS = {
    "context_length",
    "gpu_layers",
    "threads",
    "batch_size",
    "queue_depth",
    "parallel",
}
_AGENT_KEYS = {f.name for f in fields(AgentSettings)} - {"models"}
_MODEL_KEYS = {f.name for f in fields(ModelSettings)} - {"sha256"}  # set by rollouts only


def _as_int(value: object, where: str) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{where}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise SettingsError(f"{where}: expected an integer, got {value!r}")


def _model_from_table(table: Mapping[str, Any], where: str) -> ModelSettings:
    unknown = set(table) - _MODEL_KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    if "path" not in table:
        raise SettingsError(f"{where}: 'path' is required")
    path = Path(str(table["path"]))
    values: dict[str, Any] = {"path": path, "alias": str(table.get("alias") or path.stem)}
    for key in _MODEL_INT_FIELDS & set(table):
        values[key] = _as_int(table[key], f"{where}.{key}")
    if "adapters" in table:
        adapters = table["adapters"]
        if not isinstance(adapters, dict) or not all(isinstance(v, str) for v in adapters.values()):
            raise SettingsError(f'{where}.adapters: expected a table of name = "path"')
        values["adapters"] = tuple((str(k), Path(v)) for k, v in adapters.items())
    return ModelSettings(**values)


def _apply(settings: AgentSettings, values: Mapping[str, Any], where: str) -> AgentSettings:
    unknown = set(values) - _AGENT_KEYS
    if unknown:
        raise SettingsError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key in _INT_FIELDS:
            changes[key] = _as_int(value, f"{where} {key}")
        elif key in _BOOL_FIELDS:
            changes[key] = _as_bool(value, f"{where} {key}")
        elif key in _PATH_FIELDS:
            changes[key] = Path(str(value))
        else:
            changes[key] = str(value)
    return replace(settings, **changes)


def _as_bool(value: object, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{where}: expected true or false, got {value!r}")


def load_toml(path: Path) -> AgentSettings:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from exc
    tables = document.pop("models", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise SettingsError(f"{path}: 'models' must be an array of tables ([[models]])")
    models = tuple(
        _model_from_table(t, f"{path} [[models]] #{i + 1}") for i, t in enumerate(tables)
    )
    return replace(_apply(AgentSettings(), document, str(path)), models=models)


def apply_environment(settings: AgentSettings, environ: Mapping[str, str]) -> AgentSettings:
    """Overrides top-level settings from OUTPOST_AGENT_<KEY> variables (e.g. ..._HTTP_PORT)."""
    values = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and name[len(ENV_PREFIX) :].lower() in _AGENT_KEYS
    }
    return _apply(settings, values, "environment")


def apply_overrides(settings: AgentSettings, overrides: Mapping[str, Any]) -> AgentSettings:
    """Applies CLI flags; None values mean "not given"."""
    return _apply(settings, {k: v for k, v in overrides.items() if v is not None}, "command line")


def validate(settings: AgentSettings, *, managed: bool = False) -> AgentSettings:
    """`managed`: models come from the control plane, and a state directory is required."""
    if managed and settings.state_dir is None:
        raise SettingsError("--state-dir is required to run a managed agent")
    if not managed and not settings.models:
        raise SettingsError(
            "no model configured: pass --model PATH or add [[models]] to the config"
        )
    aliases = [m.alias for m in settings.models]
    duplicates = sorted({a for a in aliases if aliases.count(a) > 1})
    if duplicates:
        raise SettingsError(f"model alias(es) used twice: {', '.join(duplicates)}")
    for port_name in ("grpc_port", "http_port"):
        port = getattr(settings, port_name)
        if not 0 <= port <= 65535:
            raise SettingsError(f"{port_name} must be between 0 and 65535, got {port}")
    if settings.grpc_port == settings.http_port and settings.grpc_port != 0:
        raise SettingsError(f"grpc_port and http_port are both {settings.grpc_port}")
    if not 1 <= settings.default_max_tokens <= settings.max_tokens_limit:
        raise SettingsError("default_max_tokens must be between 1 and max_tokens_limit")
    if not 1 <= settings.telemetry_interval_s <= 3600:
        raise SettingsError("telemetry_interval_s must be between 1 and 3600")
    if settings.download_rate_limit < 0:
        raise SettingsError("download_rate_limit must not be negative (0: unlimited)")
    _check_address("peer_address", settings.peer_address, "the gRPC port")
    _check_address("inference_address", settings.inference_address, "the HTTP port")
    if settings.max_stop_sequences < 0:
        raise SettingsError("max_stop_sequences must not be negative")
    if settings.log_level.upper() not in LOG_LEVELS:
        raise SettingsError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    if settings.max_request_bytes < 1024:
        raise SettingsError("max_request_bytes must be at least 1024")
    for model in settings.models:
        if not _is_name(model.alias):
            raise SettingsError(f"model alias {model.alias!r}: use letters, digits, '-', '_', '.'")
        if model.context_length < 64:
            raise SettingsError(f"model {model.alias}: context_length must be at least 64")
        for name, _ in model.adapters:
            if not _is_name(name):
                raise SettingsError(
                    f"model {model.alias}: adapter {name!r}: use letters, digits, '-', '_', '.'"
                )
        if not 1 <= model.parallel <= MAX_PARALLEL:
            raise SettingsError(
                f"model {model.alias}: parallel must be between 1 and {MAX_PARALLEL}"
            )
        if model.queue_depth < 0 or model.batch_size < 1 or model.threads < 0:
            raise SettingsError(
                f"model {model.alias}: queue_depth, batch_size, threads out of range"
            )
    return settings


def _is_name(text: str) -> bool:
    """Letters, digits, '-', '_', '.': model aliases and adapter names (never ':')."""
    return bool(text) and text.replace("-", "").replace("_", "").replace(".", "").isalnum()


def resolve_threads(model: ModelSettings) -> int:
    return model.threads or os.cpu_count() or 1


def _check_address(name: str, value: str, port_zero: str) -> None:
    """`value` is empty or HOST:PORT (PORT 0: `port_zero`, the one the agent binds)."""
    if not value:
        return
    host, _, port = value.rpartition(":")
    bad_host = not host or not host.isprintable() or any(c.isspace() for c in host)
    # isascii: str.isdigit also accepts '²' (int() refuses it) and other scripts' digits
    if bad_host or not (port.isascii() and port.isdigit()) or not int(port) < 65536:
        raise SettingsError(f"{name} must be HOST:PORT (PORT 0: {port_zero}), got {value!r}")
