"""Bearer JWTs verified locally (PyJWT) against the KeyRing, with a cache of verified tokens."""

from __future__ import annotations

import time
from collections.abc import Callable

import jwt
import msgspec

from service.auth.keys import ALGORITHMS, KeyRing
from service.domain import Principal, Unauthenticated

MAX_TOKEN_LENGTH = 8192
MAX_OWNER_LENGTH = 255
CACHE_SIZE = 10_000


class _Verified(msgspec.Struct, frozen=True):
    principal: Principal
    valid_until: float  # exp + leeway
    key: jwt.PyJWK  # still the key of its kid, or the token is verified again


def _invalid(reason: str) -> Unauthenticated:
    return Unauthenticated(f"the bearer token is invalid: {reason}", invalid_token=True)


def _scopes(claims: dict[str, object]) -> frozenset[str]:
    """`scope` (space-separated, RFC 8693) or `scp` (a list, as some issuers send)."""
    scope = claims.get("scope")
    if isinstance(scope, str):
        return frozenset(scope.split())
    scp = claims.get("scp")
    if isinstance(scp, list):
        return frozenset(s for s in scp if isinstance(s, str))
    if isinstance(scp, str):
        return frozenset(scp.split())
    return frozenset()


class JwtAuthenticator:
    """`Authorization: Bearer <jwt>` -> Principal. Asymmetric algorithms only; `exp`, `iss`, `aud`
    and `sub` are required, and `exp`/`nbf`/`iat` are checked with `leeway` seconds."""

    def __init__(
        self,
        keys: KeyRing,
        *,
        issuer: str,
        audience: str,
        leeway: float = 30.0,
        owner_claim: str = "sub",
        cache_size: int = CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._owner_claim = owner_claim
        self._cache_size = cache_size
        self._clock = clock
        self._cache: dict[str, _Verified] = {}

    def authenticate(self, authorization: str | None) -> Principal:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer":  # no bearer token at all: a challenge without error code
            raise Unauthenticated("a bearer token is required", invalid_token=False)
        token = token.strip()
        cached = self._cache.get(token)
        if cached is not None:
            if self._clock() < cached.valid_until and self._keys.find(cached.key.key_id) is cached.key:
                return cached.principal
            del self._cache[token]
        verified = self._verify(token)
        if len(self._cache) >= self._cache_size:
            self._cache.clear()  # bounded; refills with the tokens in use
        self._cache[token] = verified
        return verified.principal

    def _verify(self, token: str) -> _Verified:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise _invalid("malformed")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid("malformed") from None
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            raise _invalid("its algorithm is not accepted")
        key = self._keys.find(header.get("kid"))
        if key is None:
            self._keys.unknown_kid()
            raise _invalid("its signing key is unknown")
        if key.algorithm_name != algorithm:
            raise _invalid("its algorithm does not match its key")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("it has expired") from None
        except jwt.ImmatureSignatureError:
            raise _invalid("it is not valid yet") from None
        except jwt.InvalidIssuerError:
            raise _invalid("wrong issuer") from None
        except jwt.InvalidAudienceError:
            raise _invalid("wrong audience") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _invalid(f"the {exc.claim} claim is missing") from None
        except jwt.InvalidSignatureError:
            raise _invalid("bad signature") from None
        except jwt.PyJWTError:
            raise _invalid("malformed") from None
        owner = claims.get(self._owner_claim)
        subject = claims["sub"]
        if not isinstance(owner, str) or not 1 <= len(owner) <= MAX_OWNER_LENGTH:
            raise _invalid(f"the {self._owner_claim} claim is not a string of 1 to {MAX_OWNER_LENGTH} characters")
        if not isinstance(subject, str) or not 1 <= len(subject) <= MAX_OWNER_LENGTH:
            raise _invalid(f"the sub claim is not a string of 1 to {MAX_OWNER_LENGTH} characters")
        principal = Principal(owner=owner, actor=subject, scopes=_scopes(claims))
        return _Verified(principal, float(claims["exp"]) + self._leeway, key)
