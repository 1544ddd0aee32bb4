from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from service.config import (
    DEFAULT_DATABASE_URL,
    ENV_VARIABLES,
    LOCAL_POSTGRES_ADMIN_URL,
    ConfigError,
    cursor_keys,
    load_settings,
    redact_url,
    with_database,
)
from service.cursor import CursorCodec


def test_cursor_round_trips_and_rejects_tampering() -> None:
    codec = CursorCodec(b"k")
    last = uuid.uuid4()
    token = codec.encode(last)
    assert codec.decode(token) == last
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    assert codec.decode(tampered) is None
    assert CursorCodec(b"other").decode(token) is None
    for junk in ["", "!!!", "a" * 100, "é", "AAAA"]:
        assert codec.decode(junk) is None


def test_settings_defaults_and_overrides() -> None:
    settings = load_settings({"PORT": "9000", "MIGRATE_ON_START": "false", "ROLES": "http,worker"})
    assert settings.port == 9000 and settings.migrate_on_start is False
    assert settings.roles == ("http", "worker")
    assert load_settings({}).grpc_port == 9090


def test_watch_heartbeat_keeps_the_15_second_promise() -> None:
    assert load_settings({}).watch_heartbeat == 15.0
    assert load_settings({"WATCH_HEARTBEAT": "15"}).watch_heartbeat == 15.0
    assert load_settings({"WATCH_HEARTBEAT": "1"}).watch_heartbeat == 1.0


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"HTTP_WORKERS": "0"}, "HTTP_WORKERS"),
        ({"DB_POOL_SIZE": "1"}, "DB_POOL_SIZE"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"SHUTDOWN_TIMEOUT": "soon"}, "SHUTDOWN_TIMEOUT"),
        ({"MIGRATE_ON_START": "maybe"}, "MIGRATE_ON_START"),
        ({"ROLES": "http,ftp"}, "ROLES"),
        ({"WATCH_HEARTBEAT": "16"}, "WATCH_HEARTBEAT"),
        ({"WATCH_HEARTBEAT": "3600"}, "WATCH_HEARTBEAT"),
        ({"WATCH_HEARTBEAT": "0.5"}, "WATCH_HEARTBEAT"),
    ],
)
def test_bad_variables_name_themselves(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(variable)


def test_passwords_never_appear_in_errors_or_redacted_urls() -> None:
    url = "postgresql://app:s3cret@db:5432/orders"
    assert redact_url(url) == "postgresql://app:***@db:5432/orders"
    assert redact_url("redis://:p@ss@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("postgresql://app@db/orders") == "postgresql://app@db/orders"
    assert redact_url("redis://[::1") == "<unparsable url>"
    assert redact_url(None) is None
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": "mysql://app:s3cret@db/x"})
    assert "s3cret" not in str(caught.value)


def test_with_database_replaces_only_the_path() -> None:
    assert with_database(LOCAL_POSTGRES_ADMIN_URL, "orders") == DEFAULT_DATABASE_URL
    assert with_database("postgresql://u@/postgres?host=%2Ftmp", "x") == "postgresql://u@/x?host=%2Ftmp"


def test_internal_variables_are_read_here_but_are_not_operator_settings() -> None:
    settings = load_settings({"PROMETHEUS_MULTIPROC_DIR": "/tmp/m", "PY_SPY": "/bin/py-spy", "ORDERS_EMBEDDED": "1"})
    assert (settings.prometheus_multiproc_dir, settings.py_spy, settings.force_embedded) == (
        "/tmp/m",
        "/bin/py-spy",
        True,
    )
    unset = load_settings({"PROMETHEUS_MULTIPROC_DIR": "", "ORDERS_EMBEDDED": "yes"})
    assert (unset.prometheus_multiproc_dir, unset.py_spy, unset.force_embedded) == (None, None, False)
    assert load_settings({"ORDERS_EMBEDDED": "true"}).force_embedded
    assert not {"PROMETHEUS_MULTIPROC_DIR", "PY_SPY", "ORDERS_EMBEDDED"} & set(ENV_VARIABLES)


# ---- CURSOR_SECRET fails closed ----------------------------------------------------------------

KEY_A = "a" * 32
KEY_B = "b" * 40


@pytest.mark.parametrize("raw", ["", "short", "x" * 31, f"{KEY_A},short", f"{KEY_A},"])
def test_a_cursor_secret_shorter_than_32_bytes_is_refused_naming_it(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"CURSOR_SECRET": raw})
    assert str(caught.value).startswith("CURSOR_SECRET")
    assert raw not in str(caught.value) or raw == ""  # the value itself is never echoed


def test_several_keys_rotate_the_first_signs_and_all_verify(tmp_path: Path) -> None:
    old = CursorCodec(*cursor_keys(load_settings({"CURSOR_SECRET": KEY_A}, data_dir=str(tmp_path))))
    rotated = CursorCodec(*cursor_keys(load_settings({"CURSOR_SECRET": f"{KEY_B}, {KEY_A}"})))
    last = uuid.uuid4()
    assert rotated.decode(old.encode(last)) == last  # issued before the rotation: still good
    assert old.decode(rotated.encode(last)) is None  # signed with the new key
    assert CursorCodec(KEY_B.encode()).decode(rotated.encode(last)) == last


def test_unset_locally_a_key_is_generated_once_under_data_dir(tmp_path: Path) -> None:
    settings = load_settings({"DATA_DIR": str(tmp_path / "data")})
    first = cursor_keys(settings)
    assert len(first) == 1 and len(first[0]) >= 32
    assert cursor_keys(settings) == first  # every process of the service reads the same key
    secret_file = tmp_path / "data" / "cursor-secret"
    assert secret_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert cursor_keys(load_settings({"DATA_DIR": str(tmp_path / "other")})) != first


def test_where_a_key_is_required_unset_is_an_error(tmp_path: Path) -> None:
    settings = load_settings({"REQUIRE_CURSOR_SECRET": "true", "DATA_DIR": str(tmp_path)})
    with pytest.raises(ConfigError, match=r"^CURSOR_SECRET is required"):
        cursor_keys(settings)
    assert not (tmp_path / "cursor-secret").exists()
