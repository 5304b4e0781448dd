"""Agent settings: TOML file, environment and command-line layers, and validation."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.cli import _parser, build_settings
from agent.settings import (
    AgentSettings,
    ModelSettings,
    SettingsError,
    apply_environment,
    apply_overrides,
    load_toml,
    resolve_threads,
    validate,
)

MODEL = ModelSettings(path=Path("/models/tiny.gguf"), alias="tiny")


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def valid(**changes: Any) -> AgentSettings:
    return replace(AgentSettings(models=(MODEL,)), **changes)


# --- TOML file ---------------------------------------------------------------------------


def test_full_config_file_is_loaded(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
host = "0.0.0.0"
grpc_port = 6000
http_port = 6001
max_tokens_limit = 1000
default_max_tokens = 100
log_level = "DEBUG"

[[models]]
path = "/models/qwen-0.5b.gguf"
alias = "qwen"
context_length = 2048
gpu_layers = 10
threads = 4
batch_size = 128
queue_depth = 3

[[models]]
path = "/models/smol-135m.gguf"
""",
    )
    settings = load_toml(path)
    assert settings.host == "0.0.0.0"
    assert (settings.grpc_port, settings.http_port) == (6000, 6001)
    assert (settings.max_tokens_limit, settings.default_max_tokens) == (1000, 100)
    assert settings.log_level == "DEBUG"
    assert settings.max_stop_sequences == AgentSettings().max_stop_sequences
    assert settings.models == (
        ModelSettings(
            path=Path("/models/qwen-0.5b.gguf"),
            alias="qwen",
            context_length=2048,
            gpu_layers=10,
            threads=4,
            batch_size=128,
            queue_depth=3,
        ),
        ModelSettings(path=Path("/models/smol-135m.gguf"), alias="smol-135m"),
    )
    assert validate(settings) == settings


def test_empty_file_gives_defaults_without_models(tmp_path: Path) -> None:
    assert load_toml(write(tmp_path, "")) == AgentSettings()


def test_integer_given_as_string_in_file_is_accepted(tmp_path: Path) -> None:
    assert load_toml(write(tmp_path, 'http_port = " 8123 "\n')).http_port == 8123


def test_unknown_top_level_key_is_rejected_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'http_prot = 9000\nhost = "::1"\n')
    with pytest.raises(SettingsError, match="unknown key") as error:
        load_toml(path)
    assert "http_prot" in str(error.value)
    assert str(path) in str(error.value)


def test_unknown_model_key_is_rejected_naming_it_and_the_table(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[models]]\npath = "a.gguf"\n\n[[models]]\npath = "b.gguf"\ncontext = 512\n',
    )
    with pytest.raises(SettingsError, match="unknown key") as error:
        load_toml(path)
    message = str(error.value)
    assert "context" in message
    assert "[[models]] #2" in message
    assert str(path) in message


def test_model_without_path_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="'path' is required"):
        load_toml(write(tmp_path, '[[models]]\nalias = "x"\n'))


@pytest.mark.parametrize("text", ["models = 3\n", '[models]\npath = "a.gguf"\n', "models = [1]\n"])
def test_models_must_be_an_array_of_tables(tmp_path: Path, text: str) -> None:
    with pytest.raises(SettingsError, match=r"\[\[models\]\]"):
        load_toml(write(tmp_path, text))


def test_invalid_toml_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "http_port = = 9\n", name="broken.toml")
    with pytest.raises(SettingsError, match="not valid TOML") as error:
        load_toml(path)
    assert str(path) in str(error.value)


def test_missing_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(SettingsError, match="does not exist") as error:
        load_toml(path)
    assert str(path) in str(error.value)


def test_directory_instead_of_file_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot be read") as error:
        load_toml(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_file_that_is_not_utf8_cannot_be_read(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('host = "café"\n'.encode("latin-1"))
    with pytest.raises(SettingsError, match="cannot be read") as error:
        load_toml(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ('http_port = "abc"', "http_port"),
        ("grpc_port = 50051.5", "grpc_port"),
        ("max_tokens_limit = true", "max_tokens_limit"),
    ],
)
def test_non_integer_top_level_values_are_rejected(tmp_path: Path, line: str, key: str) -> None:
    with pytest.raises(SettingsError, match="expected an integer") as error:
        load_toml(write(tmp_path, line + "\n"))
    assert key in str(error.value)


def test_non_integer_model_value_is_rejected_naming_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\npath = "a.gguf"\nqueue_depth = "many"\n')
    with pytest.raises(SettingsError, match="expected an integer") as error:
        load_toml(path)
    assert "queue_depth" in str(error.value)
    assert "'many'" in str(error.value)


# --- environment and command line ---------------------------------------------------------


def test_environment_overrides_top_level_settings() -> None:
    environ = {
        "OUTPOST_AGENT_HTTP_PORT": "9001",
        "OUTPOST_AGENT_GRPC_PORT": " 9002 ",
        "OUTPOST_AGENT_HOST": "0.0.0.0",
        "OUTPOST_AGENT_LOG_LEVEL": "WARNING",
        "PATH": "/usr/bin",
        "HTTP_PORT": "1",
    }
    settings = apply_environment(valid(), environ)
    assert settings.http_port == 9001
    assert settings.grpc_port == 9002
    assert settings.host == "0.0.0.0"
    assert settings.log_level == "WARNING"
    assert settings.models == (MODEL,)


def test_environment_without_outpost_variables_changes_nothing() -> None:
    settings = valid(http_port=1234)
    assert apply_environment(settings, {"HOME": "/root", "OUTPOST_OTHER_PORT": "1"}) == settings


def test_environment_variables_that_name_no_setting_are_ignored() -> None:
    settings = valid()
    assert apply_environment(settings, {"OUTPOST_AGENT_MODELS": "x.gguf"}) == settings


def test_non_integer_environment_value_is_rejected_naming_the_variable() -> None:
    with pytest.raises(SettingsError, match="expected an integer") as error:
        apply_environment(valid(), {"OUTPOST_AGENT_HTTP_PORT": "abc"})
    message = str(error.value)
    assert "environment" in message
    assert "http_port" in message
    assert "'abc'" in message


def test_cli_overrides_beat_environment_which_beats_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'http_port = 7001\ngrpc_port = 7002\nhost = "10.0.0.1"\n[[models]]\npath = "m.gguf"\n',
    )
    from_file = load_toml(path)
    from_env = apply_environment(
        from_file, {"OUTPOST_AGENT_HTTP_PORT": "8001", "OUTPOST_AGENT_GRPC_PORT": "8002"}
    )
    from_cli = apply_overrides(from_env, {"http_port": 9001, "grpc_port": None, "host": None})
    assert (from_file.http_port, from_env.http_port, from_cli.http_port) == (7001, 8001, 9001)
    assert from_cli.grpc_port == 8002  # None on the command line means "not given"
    assert from_cli.host == "10.0.0.1"  # neither environment nor CLI set it
    assert validate(from_cli) == from_cli


def test_cli_override_of_unknown_key_is_rejected() -> None:
    with pytest.raises(SettingsError, match="command line: unknown key") as error:
        apply_overrides(valid(), {"bogus": 1})
    assert "bogus" in str(error.value)


def test_cli_override_with_bad_integer_is_rejected() -> None:
    with pytest.raises(SettingsError, match="command line http_port"):
        apply_overrides(valid(), {"http_port": "eighty"})


def test_boolean_is_not_an_integer() -> None:
    with pytest.raises(SettingsError, match="expected an integer"):
        apply_overrides(valid(), {"grpc_port": True})


# --- validate ----------------------------------------------------------------------------


def test_valid_settings_are_returned_unchanged() -> None:
    settings = valid(
        models=(MODEL, ModelSettings(path=Path("b.gguf"), alias="Qwen2.5-0.5B_instruct"))
    )
    assert validate(settings) is settings


def test_no_models_is_rejected() -> None:
    with pytest.raises(SettingsError, match="no model configured"):
        validate(AgentSettings())


def test_duplicate_aliases_are_rejected_naming_them() -> None:
    other = ModelSettings(path=Path("/other/tiny.gguf"), alias="tiny")
    with pytest.raises(SettingsError, match="used twice") as error:
        validate(valid(models=(MODEL, other)))
    assert "tiny" in str(error.value)


@pytest.mark.parametrize(
    ("port_name", "port"),
    [("grpc_port", -1), ("grpc_port", 65536), ("http_port", -80), ("http_port", 100_000)],
)
def test_ports_out_of_range_are_rejected(port_name: str, port: int) -> None:
    with pytest.raises(SettingsError, match="between 0 and 65535") as error:
        validate(valid(**{port_name: port}))
    assert port_name in str(error.value)
    assert str(port) in str(error.value)


def test_port_bounds_are_accepted() -> None:
    assert validate(valid(grpc_port=0, http_port=65535)).http_port == 65535


def test_same_grpc_and_http_port_is_rejected() -> None:
    with pytest.raises(SettingsError, match="both 9000"):
        validate(valid(grpc_port=9000, http_port=9000))


def test_both_ports_zero_means_any_free_ports_and_is_accepted() -> None:
    settings = valid(grpc_port=0, http_port=0)
    assert validate(settings) is settings


@pytest.mark.parametrize("alias", ["has space", "a/b", "", "-", "x:y", "tiny!"])
def test_bad_alias_characters_are_rejected(alias: str) -> None:
    model = replace(MODEL, alias=alias)
    with pytest.raises(SettingsError, match="use letters, digits") as error:
        validate(valid(models=(model,)))
    assert repr(alias) in str(error.value)


def test_default_max_tokens_above_limit_is_rejected() -> None:
    with pytest.raises(SettingsError, match="default_max_tokens"):
        validate(valid(max_tokens_limit=100, default_max_tokens=101))


def test_default_max_tokens_below_one_is_rejected() -> None:
    with pytest.raises(SettingsError, match="default_max_tokens"):
        validate(valid(default_max_tokens=0))


def test_tiny_max_request_bytes_is_rejected() -> None:
    with pytest.raises(SettingsError, match="max_request_bytes"):
        validate(valid(max_request_bytes=1023))


def test_tiny_context_length_is_rejected() -> None:
    model = replace(MODEL, context_length=63)
    with pytest.raises(SettingsError, match="context_length must be at least 64"):
        validate(valid(models=(model,)))


@pytest.mark.parametrize(
    "changes", [{"queue_depth": -1}, {"batch_size": 0}, {"threads": -2}], ids=str
)
def test_model_numbers_out_of_range_are_rejected(changes: dict[str, Any]) -> None:
    model = replace(MODEL, **changes)
    with pytest.raises(SettingsError, match="out of range") as error:
        validate(valid(models=(model,)))
    assert "tiny" in str(error.value)


def test_port_read_as_text_then_validated(tmp_path: Path) -> None:
    path = write(tmp_path, '[[models]]\npath = "m.gguf"\n')
    settings = apply_environment(load_toml(path), {"OUTPOST_AGENT_HTTP_PORT": "70000"})
    with pytest.raises(SettingsError, match="http_port must be between"):
        validate(settings)


def test_resolve_threads_uses_setting_or_cpu_count() -> None:
    assert resolve_threads(replace(MODEL, threads=3)) == 3
    assert resolve_threads(replace(MODEL, threads=0)) == (os.cpu_count() or 1)
    assert resolve_threads(replace(MODEL, threads=0)) >= 1


def test_serve_flags_set_parallel_and_lora_adapters(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    args = _parser().parse_args(
        ["serve", "--model", str(model), "--parallel", "8", "--adapter", "support=/a/s.gguf"]
    )
    (configured,) = build_settings(args, {}).models
    assert configured.parallel == 8
    assert configured.adapters == (("support", Path("/a/s.gguf")),)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--adapter", "no-path"], "use NAME=PATH"),
        (["--adapter", "bad:name=/a.gguf"], "adapter 'bad:name'"),
        (["--parallel", "0"], "parallel must be between 1 and 64"),
        (["--parallel", "65"], "parallel must be between 1 and 64"),
    ],
)
def test_bad_parallel_and_adapter_flags_are_refused(
    tmp_path: Path, flags: list[str], message: str
) -> None:
    args = _parser().parse_args(["serve", "--model", str(tmp_path / "m.gguf"), *flags])
    with pytest.raises(SettingsError, match=message):
        build_settings(args, {})
