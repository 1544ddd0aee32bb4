"""A local signing key and its JWKS for development (`orders-service dev-keys` / `dev-token`).

Never used by the service itself: it only reads the JWKS, like any issuer's.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

DEV_ISSUER = "orders-service-dev"
DEV_AUDIENCE = "orders-service"


def key_paths(data_dir: str) -> tuple[Path, Path]:
    """(private key PEM, JWKS) under DATA_DIR."""
    folder = Path(data_dir) / "auth"
    return folder / "signing-key.pem", folder / "jwks.json"


def write_dev_keys(data_dir: str, *, replace: bool = False) -> tuple[Path, Path, bool]:
    """An Ed25519 (EdDSA) key and its JWKS; an existing key is kept unless `replace`.

    Returns both paths and whether a new key was made.
    """
    key_path, jwks_path = key_paths(data_dir)
    if key_path.exists() and jwks_path.exists() and not replace:
        return key_path, jwks_path, False
    key_path.parent.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(pem)
    jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(private.public_key()))
    jwk.update({"kid": f"dev-{uuid.uuid4().hex[:12]}", "alg": "EdDSA", "use": "sig"})
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
    return key_path, jwks_path, True


def dev_token(
    data_dir: str,
    *,
    subject: str,
    scope: str,
    ttl_seconds: int = 3600,
    issuer: str = DEV_ISSUER,
    audience: str = DEV_AUDIENCE,
) -> str:
    """A token signed by the dev key (FileNotFoundError before `dev-keys`)."""
    key_path, jwks_path = key_paths(data_dir)
    private = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    kid = json.loads(jwks_path.read_text())["keys"][0]["kid"]
    now = int(time.time())
    claims = {"iss": issuer, "aud": audience, "sub": subject, "scope": scope, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})  # type: ignore[arg-type]
