import httpx

from tests.e2e.conftest import ServiceProcess


def test_health(module_service: ServiceProcess) -> None:
    r = httpx.get(f"{module_service.base_url}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
