"""The files settings name (JWKS, TLS certificate, key and client CA), checked when `serve` starts
so that a bad path or a mismatched key stops it with one line naming the variable."""

from __future__ import annotations

import ssl

from service.config import ConfigError, Settings


def _readable(name: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{name}={path!r} cannot be read ({exc.strerror or exc})") from None


def check_files(settings: Settings) -> None:
    """The files the settings name can be read, and the TLS ones hold PEM (at `serve`'s start)."""
    for name, path in (
        ("AUTH_JWKS_FILE", settings.auth_jwks_file),
        ("TLS_CERT_FILE", settings.tls_cert_file),
        ("TLS_KEY_FILE", settings.tls_key_file),
        ("TLS_CLIENT_CA_FILE", settings.tls_client_ca_file),
    ):
        if path:
            _readable(name, path)
    _check_tls_pem(settings)


def _check_tls_pem(settings: Settings) -> None:
    if settings.tls_cert_file and settings.tls_key_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"TLS_CERT_FILE={settings.tls_cert_file!r} and TLS_KEY_FILE are not a matching PEM certificate"
                f" and key ({exc})"
            ) from None
    if settings.tls_client_ca_file:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_verify_locations(settings.tls_client_ca_file)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"TLS_CLIENT_CA_FILE={settings.tls_client_ca_file!r} is not a PEM CA bundle ({exc})"
            ) from None
