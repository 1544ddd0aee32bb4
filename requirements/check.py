"""The lock files against pyproject.toml, offline (run by `make install` and `make lock-check`).

Fails, naming what to do, when a requirement of pyproject.toml (runtime, an extra, the build
system) has no pin in the lock file that installs it, or a pin outside its range; when a pin has
no hash; when a package is pinned at different versions in two lock files; when build.in and
[build-system] requires differ; or when the project itself is pinned (it is installed from the
checkout with --no-deps). Markers are evaluated for this interpreter, as pip will.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = default_environment()


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    applies: bool  # its marker holds for this interpreter
    hashes: int


def read_lock(path: Path) -> list[Pin]:
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    pins = []
    for line in logical:
        requirement_text, *hashes = line.split("--hash=")
        requirement = Requirement(requirement_text.strip())
        specs = list(requirement.specifier)
        if len(specs) != 1 or specs[0].operator != "==":
            raise SystemExit(f"{path.name}: {requirement_text.strip()!r} is not pinned with ==")
        applies = requirement.marker is None or requirement.marker.evaluate(ENV)
        pins.append(Pin(canonicalize_name(requirement.name), specs[0].version, applies, len(hashes)))
    return pins


def expand(project: dict, extras: list[str]) -> list[Requirement]:
    """Runtime requirements plus those of the extras, self-references (name[extra]) followed."""
    own = canonicalize_name(project["name"])
    result = [Requirement(text) for text in project["dependencies"]]
    seen: set[str] = set()
    todo = list(extras)
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for text in project["optional-dependencies"][extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == own:
                todo.extend(requirement.extras)
            else:
                result.append(requirement)
    return result


def main() -> int:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = pyproject["project"]
    build_requires = [Requirement(text) for text in pyproject["build-system"]["requires"]]
    build_in = [
        Requirement(line.strip()) for line in (HERE / "build.in").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    wanted = {
        "lock.txt": expand(project, []),
        "lock-tracing.txt": expand(project, ["tracing"]),
        "dev-lock.txt": expand(project, ["dev"]),
        "build-lock.txt": build_in,
    }
    problems: list[str] = []

    def key(requirements: list[Requirement]) -> set[str]:
        return {str(r) for r in requirements if canonicalize_name(r.name) != "pip"}

    if key(build_in) != key(build_requires):
        problems.append(
            f"requirements/build.in ({sorted(key(build_in))}) differs from pyproject.toml's "
            f"[build-system] requires ({sorted(key(build_requires))}): make them the same, then `make lock`"
        )

    versions: dict[str, dict[str, str]] = {}
    own = canonicalize_name(project["name"])
    for file, requirements in wanted.items():
        path = HERE / file
        if not path.exists():
            problems.append(f"requirements/{file} is missing: run `make lock`")
            continue
        pins = read_lock(path)
        applying = {}
        for pin in pins:
            if pin.hashes == 0:
                problems.append(f"requirements/{file}: {pin.name}=={pin.version} has no --hash: run `make lock`")
            if pin.name == own:
                problems.append(f"requirements/{file} pins the project itself: it is installed from the checkout")
            if pin.applies:
                applying[pin.name] = pin.version
                versions.setdefault(pin.name, {})[file] = pin.version
        for requirement in requirements:
            if requirement.marker is not None and not requirement.marker.evaluate(ENV):
                continue
            name = canonicalize_name(requirement.name)
            version = applying.get(name)
            if version is None:
                problems.append(f"requirements/{file} does not pin {requirement} (pyproject.toml): run `make lock`")
            elif not requirement.specifier.contains(version, prereleases=True):
                problems.append(
                    f"requirements/{file} pins {name}=={version}, outside {requirement} (pyproject.toml): run `make lock`"
                )
    for name, by_file in sorted(versions.items()):
        if len(set(by_file.values())) > 1:
            problems.append(f"{name} is pinned at different versions: {by_file}: run `make lock`")
    for problem in problems:
        print(f"lock check: {problem}", file=sys.stderr)
    if not problems:
        counts = ", ".join(f"{file} {sum(1 for v in versions.values() if file in v)}" for file in wanted)
        print(f"lock check: pyproject.toml fully pinned with hashes, one version per package ({counts})")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
