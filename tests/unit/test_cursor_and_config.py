from __future__ import annotations

import uuid

import pytest

from service.config import ConfigError, load_settings, redact_url
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
    ],
)
def test_bad_variables_name_themselves(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(variable)


def test_passwords_never_appear_in_errors_or_redacted_urls() -> None:
    url = "postgresql://app:s3cret@db:5432/orders"
    assert "s3cret" not in (redact_url(url) or "")
    with pytest.raises(ConfigError) as caught:
        load_settings({"DATABASE_URL": "mysql://app:s3cret@db/x"})
    assert "s3cret" not in str(caught.value)
