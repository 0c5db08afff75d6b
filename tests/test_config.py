"""Config loading: every error names the file, the key path, what was found and expected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import (
    CORE_SCHEMA,
    ConfigError,
    Field,
    Schema,
    check_port,
    load_config,
    parse_duration,
    parse_listen,
    resolve_data_dir,
)

STATSD = {
    "ingest.statsd": Schema(
        {
            "port": Field(int, 9125, check=check_port),
            "mappings": Field(
                list, [], item=Schema({"match": Field(str, ""), "name": Field(str, "")})
            ),
        }
    )
}


def errors_of(text: str, **kw: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(text=text, **kw)  # type: ignore[arg-type]
    return info.value.errors


def test_defaults_load_without_a_file() -> None:
    cfg = load_config()
    assert cfg.listen == ("127.0.0.1", 9201)
    assert cfg.raw["storage"]["block_size"] == 720
    assert cfg.source == "<defaults>"


def test_wrong_type_names_key_path_found_and_expected() -> None:
    errs = errors_of("server:\n  max_body_bytes: lots\n")
    assert errs == ["server.max_body_bytes: expected an integer, found string 'lots'"]


def test_unknown_key_suggests_the_close_one() -> None:
    errs = errors_of("storage:\n  block_sise: 10\n")
    assert len(errs) == 1
    assert errs[0].startswith("storage.block_sise: unknown key (did you mean 'block_size'?)")


def test_unknown_top_level_key() -> None:
    errs = errors_of("lisen: 0.0.0.0:1\n")
    assert errs[0].startswith("lisen: unknown key (did you mean 'listen'?)")


def test_plugin_section_key_path_and_range() -> None:
    errs = errors_of("ingest:\n  statsd:\n    port: 70000\n", extra_schemas=STATSD)
    assert errs == [
        "ingest.statsd.port: expected a port number from 0 to 65535, found integer 70000"
    ]


def test_list_items_get_indexed_paths() -> None:
    text = "ingest:\n  statsd:\n    mappings:\n      - match: a.*\n      - {match: b, nmae: x}\n"
    errs = errors_of(text, extra_schemas=STATSD)
    assert errs[0].startswith("ingest.statsd.mappings[1].nmae: unknown key (did you mean 'name'?)")


def test_choices_and_durations() -> None:
    errs = errors_of("log:\n  level: loud\nstorage:\n  flush_age: soon\n")
    assert (
        "log.level: expected one of 'debug', 'info', 'warning', 'error', found string 'loud'"
        in errs
    )
    assert any(e.startswith("storage.flush_age: expected a duration") for e in errs)


def test_all_errors_reported_at_once_with_file_name(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listen: nowhere\nlog: [1]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert f"{path}: listen: expected HOST:PORT" in text
    assert f"{path}: log: expected a mapping, found list" in text


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen: 1\nlog:\n  level: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 4" in str(info.value) or "line 3" in str(info.value)
    assert "invalid YAML" in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_config("/nonexistent/tsagent.yaml")


def test_env_expansion_and_missing_variable() -> None:
    cfg = load_config(
        text="auth:\n  write:\n    bearer_tokens: ['${TOKEN}', '${OTHER:-fallback}']\n",
        env={"TOKEN": "s3cret"},
    )
    assert cfg.raw["auth"]["write"]["bearer_tokens"] == ["s3cret", "fallback"]
    errs = errors_of("data_dir: ${NOPE}/x\n", env={})
    assert errs == ["data_dir: environment variable NOPE is not set"]


def test_plain_text_password_rejected() -> None:
    errs = errors_of("auth:\n  read:\n    basic_auth:\n      alice: hunter2\n")
    assert errs[0].startswith("auth.read.basic_auth.alice: expected a bcrypt hash")
    assert "hunter2" in errs[0]  # what was found is shown so the user sees the mistake


def test_overrides_beat_the_file() -> None:
    cfg = load_config(
        text="listen: 127.0.0.1:1\nstorage:\n  block_size: 5\n",
        overrides={"listen": "127.0.0.1:2", "storage.retention": "30d"},
    )
    assert cfg.listen == ("127.0.0.1", 2)
    assert cfg.raw["storage"]["block_size"] == 5
    assert cfg.duration("storage.retention") == 30 * 86400


def test_bool_is_not_an_int() -> None:
    errs = errors_of("storage:\n  block_size: true\n")
    assert errs == ["storage.block_size: expected an integer, found boolean True"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("15s", 15), ("1h30m", 5400), ("7d", 604800), ("0", 0), ("250ms", 0.25), (90, 90)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_listen_forms() -> None:
    assert parse_listen("[::1]:9201") == ("::1", 9201)
    assert parse_listen(":9201") == ("0.0.0.0", 9201)
    with pytest.raises(ValueError):
        parse_listen("localhost")


def test_data_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert resolve_data_dir("") == tmp_path / "tsagent"
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/tsagent:/other")
    assert resolve_data_dir("") == Path("/var/lib/tsagent")
    assert resolve_data_dir("/srv/x") == Path("/srv/x")


def test_example_config_is_current_and_valid() -> None:
    from agent.cli import example_config

    committed = Path(__file__).parent.parent / "config" / "tsagent.example.yaml"
    assert committed.read_text() == example_config(), (
        "config/tsagent.example.yaml is stale: run `tsagent example-config > "
        "config/tsagent.example.yaml`"
    )
    cfg = load_config(committed, extra_schemas=_builtin_schemas())
    assert cfg.raw["listen"] == "127.0.0.1:9201"


def _builtin_schemas() -> dict[str, Schema]:
    from agent.plugins import get_plugin_manager

    host = get_plugin_manager()
    out: dict[str, Schema] = {}
    for name, info in host.loaded.items():
        fn = getattr(host.pm.get_plugin(name), "config_schema", None)
        if info.builtin and fn is not None:
            out.update(fn())
    return out


def test_every_core_key_has_help_or_is_a_section() -> None:
    missing = [
        key for key, spec in CORE_SCHEMA.fields.items() if isinstance(spec, Field) and not spec.help
    ]
    assert missing == []


# --- typed views (issue 14) -----------------------------------------------------------------


def test_typed_views_are_frozen_dataclasses_with_durations_in_seconds() -> None:
    import dataclasses

    config = load_config(
        text="storage:\n  retention: 2d\n  retention_rules:\n"
        "    - {match: '^debug_', retention: 1h}\n"
        "  rollups:\n    retention: {1h: 90d}\n"
    )
    storage = config.typed("storage")
    assert dataclasses.is_dataclass(storage)
    assert storage.retention == 2 * 86400.0  # parsed once, here
    assert storage.retention_rules[0].match == "^debug_"
    assert storage.retention_rules[0].retention == 3600.0
    assert storage.rollups.retention["1h"] == 90 * 86400.0
    assert config.typed("storage.rollups") == storage.rollups
    with pytest.raises(dataclasses.FrozenInstanceError):
        storage.retention = 0.0  # type: ignore[misc]
    assert config.typed("storage") is storage  # made once per config
    assert config.duration("storage.retention") == 2 * 86400.0


def test_an_unknown_section_path_raises_with_a_suggestion() -> None:
    config = load_config()
    with pytest.raises(ConfigError, match=r"storag: no such section \(did you mean 'storage'\?\)"):
        config.section("storag")
    with pytest.raises(ConfigError, match=r"storage\.rollup: no such section"):
        config.typed("storage.rollup")
    with pytest.raises(ConfigError, match=r"storage\.retention: is a key, not a section"):
        config.section("storage.retention")


def test_plugin_sections_are_typed_too(make_config: Any) -> None:
    config, _host = make_config("ingest:\n  statsd:\n    flush_interval: 30s\n")
    statsd = config.typed("ingest.statsd")
    assert statsd.flush_interval == 30.0
    with pytest.raises(ConfigError, match=r"did you mean 'ingest\.statsd'"):
        config.section("ingest.statds")
