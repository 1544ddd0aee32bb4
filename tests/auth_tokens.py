"""Signing keys, JWKS documents and tokens made by the tests (cryptography + PyJWT), and a local
JWKS endpoint whose keys a test can rotate."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ISSUER = "https://issuer.test/"
AUDIENCE = "orders-service"


class SigningKey:
    """A private key of one algorithm, its kid, and its public JWK."""

    def __init__(self, kid: str, algorithm: str = "ES256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        self.private: Any
        if algorithm == "ES256":
            self.private = ec.generate_private_key(ec.SECP256R1())
            jwk = jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        elif algorithm == "RS256":
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        else:
            self.private = ed25519.Ed25519PrivateKey.generate()
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        self.jwk: dict[str, Any] = {**jwk, "kid": kid, "use": "sig", "alg": algorithm}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(
        self,
        sub: str = "alice",
        scope: str | None = "orders:read orders:write",
        *,
        iss: str = ISSUER,
        aud: str = AUDIENCE,
        expires_in: float = 300,
        not_before_in: float | None = None,
        kid: str | None = None,
        omit: tuple[str, ...] = (),
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {"iss": iss, "aud": aud, "sub": sub, "iat": now, "exp": now + int(expires_in)}
        if scope is not None:
            payload["scope"] = scope
        if not_before_in is not None:
            payload["nbf"] = now + int(not_before_in)
        payload.update(claims)
        for name in omit:
            payload.pop(name, None)
        return jwt.encode(payload, self.private, algorithm=self.algorithm, headers={"kid": kid or self.kid})


def jwks(*keys: SigningKey) -> dict[str, Any]:
    return {"keys": [key.jwk for key in keys]}


def write_jwks(path: Path, *keys: SigningKey) -> Path:
    path.write_text(json.dumps(jwks(*keys)))
    return path


def unsigned_token(sub: str = "alice", scope: str = "orders:read orders:write orders:admin") -> str:
    """alg "none": no signature at all."""
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": scope, "exp": now + 300}
    return jwt.encode(claims, None, algorithm="none")


def hs256_with_public_key(key: SigningKey, sub: str = "mallory") -> str:
    """The key-confusion attack: HMAC "signed" with the issuer's public key as the secret."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "scope": "orders:read orders:admin", "exp": now + 300}
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(key.public_pem(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


class JwksServer:
    """An HTTP JWKS endpoint on a free port; `publish` replaces the keys it serves."""

    def __init__(self, *keys: SigningKey) -> None:
        self.document = json.dumps(jwks(*keys)).encode()
        self.requests = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests += 1
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(server.document)))
                self.end_headers()
                self.wfile.write(server.document)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, *keys: SigningKey) -> None:
        self.document = json.dumps(jwks(*keys)).encode()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
