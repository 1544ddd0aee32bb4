"""The session settings (DB_STATEMENT_TIMEOUT, custom plans) reach PostgreSQL as DSN options, merged with its own."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from service.config import load_settings
from service.store.database import with_session_settings


def _options(dsn: str) -> list[str]:
    return parse_qs(urlsplit(dsn).query).get("options", [])


def test_statement_timeout_is_added_as_an_option() -> None:
    dsn = with_session_settings("postgresql://u@db:5432/orders", 2.5)
    assert dsn.startswith("postgresql://u@db:5432/orders?")
    assert _options(dsn) == ["-c enable_seqscan=off -c statement_timeout=2500"]
    custom = with_session_settings("postgresql://u@db:5432/orders", 2.5, custom_plans=True)
    assert _options(custom) == ["-c plan_cache_mode=force_custom_plan -c statement_timeout=2500"]


def test_existing_options_and_parameters_are_kept() -> None:
    dsn = with_session_settings("postgresql://u@db/orders?sslmode=disable&options=-c%20search_path%3Dt_1", 0.001)
    query = parse_qs(urlsplit(dsn).query)
    assert query["sslmode"] == ["disable"]
    assert query["options"] == ["-c search_path=t_1 -c enable_seqscan=off -c statement_timeout=1"]


def test_zero_means_no_limit() -> None:
    dsn = with_session_settings("postgresql://u@db/orders?x=1", 0)
    assert parse_qs(urlsplit(dsn).query) == {"x": ["1"], "options": ["-c enable_seqscan=off"]}
    custom = with_session_settings("postgresql://u@db/orders?x=1", 0, custom_plans=True)
    assert parse_qs(urlsplit(custom).query) == {"x": ["1"], "options": ["-c plan_cache_mode=force_custom_plan"]}


def test_setting_defaults_to_five_seconds_and_accepts_zero() -> None:
    assert load_settings({}).db_statement_timeout == 5.0
    assert load_settings({"DB_STATEMENT_TIMEOUT": "0"}).db_statement_timeout == 0.0
