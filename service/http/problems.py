"""Maps every failure of a request to an RFC 9457 problem response. The only place that does."""

from __future__ import annotations

import logging
import random
import re

import msgspec

from service.domain import (
    ChangesUnavailable,
    CursorExpired,
    DomainError,
    FieldViolation,
    IdempotencyKeyReused,
    InvalidTransition,
    OrderNotFound,
    PermissionDenied,
    StoreOverloaded,
    StoreUnavailable,
    Unauthenticated,
    ValidationFailed,
    VersionMismatch,
    WatcherTooSlow,
)
from service.http.schemas import FieldError, Problem
from service.ratelimit import RateLimited

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
_PROBLEM_BASE = "https://orders-service.dev/problems/"
_encode = msgspec.json.Encoder().encode
_FIELD_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_MISSING = "Object missing required field `"
_UNKNOWN = "Object contains unknown field `"
RETRY_AFTER_SECONDS = (1, 3)  # a jittered Retry-After spreads retries instead of bringing them back in step


def retry_after() -> str:
    return str(random.randint(*RETRY_AFTER_SECONDS))


class HttpError(Exception):
    """A failure decided by the HTTP layer itself (routing, headers, body framing)."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: list[tuple[str, str]] | None = None,
        violations: list[FieldViolation] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or []
        self.violations = violations


def bad_request(field: str, message: str) -> HttpError:
    return HttpError(
        400,
        "validation",
        "Invalid request",
        f"{field}: {message}",
        violations=[FieldViolation(field, message)],
    )


def decode_error(exc: msgspec.DecodeError | UnicodeDecodeError) -> HttpError:
    """A 400 naming the field msgspec rejected (or `body` when the JSON itself is malformed)."""
    if isinstance(exc, UnicodeDecodeError):  # msgspec's answer to invalid UTF-8 inside a string
        return bad_request("body", "is not valid UTF-8")
    message = str(exc)
    if isinstance(exc, msgspec.ValidationError):
        # A missing or unknown field of the body object: its name is all that stands between the
        # message's own quotes (a client's field name may itself hold backticks or "at `$.x`").
        for prefix, meaning in ((_MISSING, "is required"), (_UNKNOWN, "is not a known field")):
            if message.startswith(prefix) and message.endswith("`"):
                return bad_request(message[len(prefix) : -1], meaning)
        match = _FIELD_PATH.search(message)  # the path is a suffix
        field = match.group(1) if match and match.group(1) else "body"
        text = message[: match.start()] if match else message
        text = text[0].lower() + text[1:] if text else "is invalid"
        return bad_request(field, text)
    return bad_request("body", f"is not valid JSON ({message})")


_DOMAIN_STATUS: list[tuple[type[BaseException], int, str, str]] = [
    (ValidationFailed, 400, "validation", "Invalid request"),
    (OrderNotFound, 404, "not-found", "Order not found"),
    (InvalidTransition, 409, "invalid-transition", "Status change not allowed"),
    (VersionMismatch, 412, "precondition-failed", "Version does not match"),
    (IdempotencyKeyReused, 422, "idempotency-key-reused", "Idempotency key reused"),
    (CursorExpired, 410, "cursor-expired", "Cursor expired"),
    (WatcherTooSlow, 429, "watcher-too-slow", "Watcher too slow"),
    (Unauthenticated, 401, "unauthenticated", "Authentication required"),
    (PermissionDenied, 403, "insufficient-scope", "Insufficient scope"),
]


def _challenge(exc: BaseException) -> list[tuple[str, str]]:
    """The RFC 6750 `WWW-Authenticate` challenge of a 401 or 403 (the details hold no quotes)."""
    if isinstance(exc, Unauthenticated):
        if not exc.invalid_token:
            return [("www-authenticate", "Bearer")]
        return [("www-authenticate", f'Bearer error="invalid_token", error_description="{exc.detail}"')]
    if isinstance(exc, PermissionDenied):
        return [("www-authenticate", f'Bearer error="insufficient_scope", scope="{exc.scope}"')]
    return []


def problem_for(exc: BaseException, request_id: str) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, extra headers and problem+json body for any exception raised by a request."""
    if isinstance(exc, HttpError):
        return (
            exc.status,
            exc.headers,
            _body(exc.status, exc.slug, exc.title, exc.detail, request_id, exc.violations),
        )
    if isinstance(exc, RateLimited):
        headers = [
            ("retry-after", str(exc.retry_after_seconds)),
            ("ratelimit-policy", exc.policy),
            ("ratelimit", exc.state),
        ]
        return 429, headers, _body(429, "rate-limited", "Too many requests", str(exc), request_id, None)
    if isinstance(exc, StoreOverloaded):  # shed at once; logging each would be the next overload
        body = _body(
            503,
            "overloaded",
            "Service overloaded",
            "too many requests are waiting for the database; retry later",
            request_id,
            None,
        )
        return 503, [("retry-after", retry_after())], body
    if isinstance(exc, StoreUnavailable):
        log.warning("database unavailable: %s", exc)
        body = _body(
            503,
            "unavailable",
            "Service unavailable",
            "the database is unavailable; retry later",
            request_id,
            None,
        )
        return 503, [("retry-after", retry_after())], body
    if isinstance(exc, ChangesUnavailable):
        log.warning("change feed unavailable: %s", exc)
        detail = "the change feed is unavailable; retry later"
        body = _body(503, "unavailable", "Service unavailable", detail, request_id, None)
        return 503, [("retry-after", retry_after())], body
    for kind, status, slug, title in _DOMAIN_STATUS:
        if isinstance(exc, kind):
            detail = exc.detail if isinstance(exc, DomainError) else title
            violations = exc.violations if isinstance(exc, ValidationFailed) else None
            return status, _challenge(exc), _body(status, slug, title, detail, request_id, violations)
    log.error("unhandled error", exc_info=exc)
    return (
        500,
        [],
        _body(
            500,
            "internal",
            "Internal error",
            "an unexpected error occurred; quote the request_id when reporting it",
            request_id,
            None,
        ),
    )


def _body(
    status: int,
    slug: str,
    title: str,
    detail: str,
    request_id: str,
    violations: list[FieldViolation] | None,
) -> bytes:
    errors = [FieldError(v.field, v.message) for v in violations] if violations else None
    return _encode(
        Problem(
            type=_PROBLEM_BASE + slug,
            title=title,
            status=status,
            detail=detail,
            request_id=request_id,
            errors=errors,
        )
    )
