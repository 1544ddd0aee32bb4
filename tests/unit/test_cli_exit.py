"""`orders-service` ends through service.cli.run: what the interpreter's own exit would have done
(exit code, atexit handlers, flushed output, a traceback) still happens, without finalization."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run_with(main_body: str) -> subprocess.CompletedProcess[str]:
    """Run service.cli.run with `main` replaced by a function whose body is main_body."""
    script = textwrap.dedent(
        """
        import atexit, sys
        import service.cli as cli

        atexit.register(lambda: print("atexit ran", flush=False))

        def fake_main():
        {body}

        cli.main = fake_main
        cli.run()
        print("never reached")
        """
    ).format(body=textwrap.indent(textwrap.dedent(main_body), "    "))
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=ROOT, check=False
    )


def test_the_console_script_and_python_m_service_end_through_run() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["orders-service"] == "service.cli:run"
    assert "run()" in (ROOT / "service" / "__main__.py").read_text()


@pytest.mark.parametrize(("body", "code"), [("return 0", 0), ("return 3", 3), ("raise SystemExit(2)", 2)])
def test_the_exit_code_is_the_commands(body: str, code: int) -> None:
    finished = _run_with(f"print('buffered, not flushed', end='')\n{body}")
    assert finished.returncode == code
    assert finished.stdout == "buffered, not flushedatexit ran\n"  # stdout flushed after atexit
    assert "never reached" not in finished.stdout


def test_system_exit_with_a_message_prints_it_and_exits_1() -> None:
    finished = _run_with("raise SystemExit('orders-service: no such thing')")
    assert finished.returncode == 1
    assert finished.stderr.strip() == "orders-service: no such thing"


def test_an_uncaught_error_prints_its_traceback_and_exits_1() -> None:
    finished = _run_with("raise RuntimeError('boom')")
    assert finished.returncode == 1
    assert "Traceback (most recent call last)" in finished.stderr
    assert "RuntimeError: boom" in finished.stderr
    assert "atexit ran" in finished.stdout


def test_log_records_still_reach_their_handler() -> None:
    finished = _run_with(
        """
        import logging
        handler = logging.StreamHandler(sys.stderr)
        logging.getLogger("t").addHandler(handler)
        logging.getLogger("t").warning("last words")
        return 0
        """
    )
    assert finished.returncode == 0
    assert "last words" in finished.stderr
