"""Opaque keyset-pagination cursors: the last id of a page, tagged so tampering is detected."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import uuid

_VERSION = b"\x01"
_TAG_SIZE = 8
_RAW_SIZE = len(_VERSION) + 16 + _TAG_SIZE


class CursorCodec:
    """`key` signs new cursors; it and every key in `previous` verify them (key rotation)."""

    def __init__(self, key: bytes, *previous: bytes) -> None:
        self._key = key
        self._keys = (key, *previous)

    def _tag(self, payload: bytes, key: bytes | None = None) -> bytes:
        return hashlib.blake2b(payload, digest_size=_TAG_SIZE, key=self._key if key is None else key).digest()

    def encode(self, last_id: uuid.UUID) -> str:
        payload = _VERSION + last_id.bytes
        return base64.urlsafe_b64encode(payload + self._tag(payload)).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str) -> uuid.UUID | None:
        """The id the cursor names, or None when it is malformed or was tampered with."""
        if not cursor or len(cursor) > 64 or not cursor.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _RAW_SIZE or raw[:1] != _VERSION:
            return None
        # One spelling per cursor: base64 decoding ignores the last character's spare bits, padding
        # and characters outside the alphabet, so other strings than the issued one would decode.
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != cursor:
            return None
        payload, tag = raw[:-_TAG_SIZE], raw[-_TAG_SIZE:]
        if not any(hmac.compare_digest(tag, self._tag(payload, key)) for key in self._keys):
            return None
        return uuid.UUID(bytes=payload[1:])
