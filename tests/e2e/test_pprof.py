"""The admin port: py-spy profiles and dumps of the service's own processes, and its refusals."""

from __future__ import annotations

import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ServiceProcess


@pytest.fixture(scope="module")
def profiled(module_service: ServiceProcess) -> ServiceProcess:
    return module_service


def _admin(service: ServiceProcess, path: str, timeout: float = 60) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{service.pprof_port}{path}", timeout=timeout)


def _processes(service: ServiceProcess) -> list[dict[str, object]]:
    return _admin(service, "/debug/pprof/").json()["processes"]  # type: ignore[no-any-return]


def _keep_busy(service: ServiceProcess, seconds: float) -> list[threading.Thread]:
    """Traffic on fresh connections from several threads, so that every HTTP worker gets some."""
    order = httpx.post(f"{service.base_url}/orders", json={"product": "profiled", "quantity": 1}).json()

    def traffic() -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            httpx.get(f"{service.base_url}/orders/{order['id']}")

    threads = [threading.Thread(target=traffic, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    return threads


def test_index_lists_every_process_with_links(profiled: ServiceProcess) -> None:
    processes = _processes(profiled)
    roles = [p["role"] for p in processes]
    assert roles.count("supervisor") == 1 and roles.count("http") == 1 and roles.count("http-worker") == 2
    assert all(isinstance(p["rss_bytes"], int) and p["rss_bytes"] > 0 for p in processes)
    assert all(str(p["profile"]).startswith("/debug/pprof/profile") for p in processes)
    page = _admin(profiled, "/debug/pprof/?format=html")
    assert page.headers["content-type"].startswith("text/html") and "http-worker" in page.text


def test_flame_graph_of_a_worker_names_the_services_functions(profiled: ServiceProcess) -> None:
    # The kernel decides which worker accepts each connection, so one worker may see none of the
    # traffic in a short window; each worker is recorded in turn and the busy one must name our code.
    workers = [p for p in _processes(profiled) if p["role"] == "http-worker"]
    busy = _keep_busy(profiled, 2.5 * len(workers) + 1)
    responses = [_admin(profiled, f"/debug/pprof/profile?seconds=2&pid={w['pid']}&rate=250") for w in workers]
    for thread in busy:
        thread.join()
    recorded = [r for r in responses if r.status_code == 200]
    assert recorded, [r.text for r in responses]
    for idle in (r for r in responses if r.status_code != 200):
        assert idle.status_code == 422 and "idle" in idle.text, idle.text
    response = recorded[0]
    assert response.headers["content-type"] == "image/svg+xml"
    assert "attachment" in response.headers["content-disposition"]
    root = ET.fromstring(response.content)
    assert root.tag.endswith("svg")
    assert "service/" in response.text or "RestApi" in response.text or "RsgiApp" in response.text


def test_speedscope_of_all_processes_is_json(profiled: ServiceProcess) -> None:
    response = _admin(profiled, "/debug/pprof/profile?seconds=1&format=speedscope&idle=1")
    assert response.status_code == 200, response.text
    document = json.loads(response.content)
    assert "speedscope" in document["$schema"] and document["profiles"]


def test_an_idle_recording_says_so(profiled: ServiceProcess) -> None:
    response = _admin(profiled, "/debug/pprof/profile?seconds=1&format=raw")
    assert response.status_code in (200, 422)
    if response.status_code == 422:
        assert "idle=1" in response.json()["error"]


def test_dump_shows_every_thread(profiled: ServiceProcess) -> None:
    text = _admin(profiled, "/debug/pprof/dump").text
    assert "== supervisor" in text and "== http-worker" in text and "Thread" in text


def test_refusals(profiled: ServiceProcess) -> None:
    assert _admin(profiled, "/debug/pprof/profile?seconds=1&pid=1").status_code == 404
    assert _admin(profiled, "/debug/pprof/dump?pid=1").status_code == 404
    for bad in ("seconds=0", "seconds=121", "seconds=x", "format=png", "rate=0", "idle=2", "pid=abc"):
        assert _admin(profiled, f"/debug/pprof/profile?{bad}").status_code == 400, bad
    assert _admin(profiled, "/debug/elsewhere").status_code == 404


def test_one_recording_at_a_time(profiled: ServiceProcess) -> None:
    first: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: first.append(_admin(profiled, "/debug/pprof/profile?seconds=3&idle=1")))
    thread.start()
    time.sleep(1.0)
    assert _admin(profiled, "/debug/pprof/profile?seconds=1").status_code == 409
    thread.join()
    assert first[0].status_code == 200


def test_admin_port_listens_on_loopback_only(profiled: ServiceProcess) -> None:
    port_hex = f"{profiled.pprof_port:04X}"
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[1].endswith(f":{port_hex}") and line.split()[3] == "0A"
    ]
    assert listening == [f"0100007F:{port_hex}"]


def test_no_ptrace_permission_is_a_503_that_says_so(start_service, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    fake = tmp_path / "py-spy"
    fake.write_text("#!/bin/sh\necho 'Error: Operation not permitted (os error 1)' >&2\nexit 1\n")
    fake.chmod(0o755)
    service = start_service(PY_SPY=str(fake))
    response = _admin(service, "/debug/pprof/profile?seconds=1")
    assert response.status_code == 503
    assert "SYS_PTRACE" in response.json()["error"]
