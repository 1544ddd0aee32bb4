"""The signing keys tokens are verified with: a JWKS from a file or a URL, loaded at start and
refreshed in the background (never on the request path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import jwt

log = logging.getLogger(__name__)

# Asymmetric algorithms only: "none" and HMAC (whose secret a JWKS would have to publish) never verify.
ALGORITHMS = frozenset(("RS256", "ES256", "EdDSA"))
MAX_JWKS_BYTES = 1024 * 1024
MAX_KEYS = 100
FETCH_TIMEOUT = 5.0
EARLY_REFRESH_INTERVAL = 60.0  # an unknown kid refreshes early at most this often

Loader = Callable[[], bytes]


class JwksError(Exception):
    """A JWKS that cannot be read or holds no usable key."""


def parse_jwks(raw: bytes) -> dict[str, jwt.PyJWK]:
    """The usable signing keys of a JWKS document by kid (keys for other algorithms are skipped)."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise JwksError(f"not JSON ({exc})") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list):
        raise JwksError('not a JWKS: no "keys" list')
    keys: dict[str, jwt.PyJWK] = {}
    for entry in entries[:MAX_KEYS]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig" or entry.get("kty") == "oct":
            continue
        try:
            key = jwt.PyJWK(entry)
        except jwt.PyJWTError:
            continue
        kid = entry.get("kid")
        if key.algorithm_name in ALGORITHMS and isinstance(kid, str) and kid:
            keys[kid] = key
    if not keys:
        raise JwksError("no usable signing key (RS256, ES256 or EdDSA, with a kid)")
    return keys


def file_loader(path: str) -> Loader:
    def load() -> bytes:
        with Path(path).open("rb") as handle:
            return handle.read(MAX_JWKS_BYTES + 1)

    return load


def url_loader(url: str) -> Loader:
    def load() -> bytes:
        request = urllib.request.Request(url, headers={"accept": "application/json"})  # noqa: S310 - http(s) only (config)
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:  # noqa: S310
            return bytes(response.read(MAX_JWKS_BYTES + 1))

    return load


def load_keys(load: Loader) -> dict[str, jwt.PyJWK]:
    """Read and parse the JWKS now; JwksError (or OSError) when it cannot be."""
    raw = load()
    if len(raw) > MAX_JWKS_BYTES:
        raise JwksError(f"larger than {MAX_JWKS_BYTES} bytes")
    return parse_jwks(raw)


class KeyRing:
    """The current keys by kid. `run` refreshes them every `refresh_seconds`, and early (at most
    once a minute) after a token named a kid it does not know; a failed refresh keeps the old keys."""

    def __init__(
        self,
        load: Loader,
        refresh_seconds: float,
        *,
        keys: dict[str, jwt.PyJWK] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._refresh_seconds = refresh_seconds
        self._clock = clock
        self.keys: dict[str, jwt.PyJWK] = keys or {}
        self._wake: asyncio.Event | None = None
        self._last_early = -EARLY_REFRESH_INTERVAL

    def find(self, kid: object) -> jwt.PyJWK | None:
        """The key `kid` names; a token without kid may use the only key, when there is one."""
        if isinstance(kid, str):
            return self.keys.get(kid)
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return None

    def unknown_kid(self) -> None:
        """A token named a kid we do not have: ask `run` to refresh now, at most once a minute."""
        now = self._clock()
        if self._wake is not None and now - self._last_early >= EARLY_REFRESH_INTERVAL:
            self._last_early = now
            self._wake.set()

    async def refresh(self) -> bool:
        try:
            keys = await asyncio.to_thread(load_keys, self._load)
        except (OSError, JwksError) as exc:
            log.warning("JWKS refresh failed; keeping the current keys", extra={"error": str(exc)})
            return False
        if keys.keys() != self.keys.keys():
            log.info("JWKS keys changed", extra={"kids": sorted(keys)})
        self.keys = keys
        return True

    async def run(self) -> None:
        """Refresh in the background until cancelled (the first round at once when no keys yet)."""
        self._wake = asyncio.Event()
        if not self.keys:
            await self.refresh()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._refresh_seconds)
            self._wake.clear()
            await self.refresh()
