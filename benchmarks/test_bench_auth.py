"""Micro-benchmarks of what AUTH_MODE=jwt adds to a request: the cached verification of a token
seen before (the steady state), and a first-time ES256 verification."""

from __future__ import annotations

import json

from service.auth.keys import KeyRing, parse_jwks
from service.auth.verifier import JwtAuthenticator
from tests.auth_tokens import AUDIENCE, ISSUER, SigningKey, jwks

KEY = SigningKey("bench", "ES256")


def _authenticator(cache_size: int = 10_000) -> JwtAuthenticator:
    raw = json.dumps(jwks(KEY)).encode()
    ring = KeyRing(lambda: raw, 300, keys=parse_jwks(raw))
    return JwtAuthenticator(ring, issuer=ISSUER, audience=AUDIENCE, cache_size=cache_size)


def test_authenticate_cached_token(benchmark) -> None:  # type: ignore[no-untyped-def]
    auth = _authenticator()
    header = f"Bearer {KEY.token(expires_in=3600)}"
    auth.authenticate(header)
    assert benchmark(auth.authenticate, header).owner == "alice"


def test_authenticate_new_token_es256(benchmark) -> None:  # type: ignore[no-untyped-def]
    auth = _authenticator(cache_size=1)  # a cache of one and two tokens in turn: never a hit
    headers = [f"Bearer {KEY.token(sub=f'u{i}', expires_in=3600)}" for i in range(2)]
    turn = iter(range(10**9))

    def verify() -> str:
        return auth.authenticate(headers[next(turn) % 2]).owner

    assert benchmark(verify).startswith("u")
