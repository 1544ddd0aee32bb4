"""Production clock and id source."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import uuid_utils.compat


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class UuidV7Source:
    def new_id(self) -> uuid.UUID:
        return uuid_utils.compat.uuid7()
