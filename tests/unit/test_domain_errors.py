"""No false contract: every domain error is raised somewhere and mapped by both transports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from service import domain
from service.grpc import status as grpc_status
from service.http import problems

SERVICE = Path(domain.__file__).parent


def _subclasses(kind: type[BaseException]) -> list[type[BaseException]]:
    found: list[type[BaseException]] = []
    for sub in kind.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


DOMAIN_ERRORS = [kind for kind in _subclasses(domain.DomainError) if kind.__module__ == domain.__name__]


def _raised_names() -> set[str]:
    """Names of every class raised as `raise Name(...)` (or `raise module.Name(...)`) in service/."""
    names: set[str] = set()
    for path in SERVICE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                if isinstance(func, ast.Name):
                    names.add(func.id)
                elif isinstance(func, ast.Attribute):
                    names.add(func.attr)
    return names


def test_there_are_domain_errors_to_check() -> None:
    assert len(DOMAIN_ERRORS) >= 5, DOMAIN_ERRORS


@pytest.mark.parametrize("kind", DOMAIN_ERRORS, ids=lambda kind: kind.__name__)
def test_every_domain_error_is_raised_somewhere(kind: type[BaseException]) -> None:
    assert kind.__name__ in _raised_names(), f"{kind.__name__} is never raised in service/: remove it"


@pytest.mark.parametrize("kind", DOMAIN_ERRORS, ids=lambda kind: kind.__name__)
def test_every_domain_error_has_a_problem_type_and_a_grpc_status(kind: type[BaseException]) -> None:
    assert kind in {row[0] for row in problems._DOMAIN_STATUS}, f"{kind.__name__}: no row in http/problems.py"
    mapped_by_grpc = {row[0] for row in grpc_status._CODES} | {domain.ValidationFailed}  # the latter has details
    assert kind in mapped_by_grpc, f"{kind.__name__}: no row in grpc/status.py"
