"""The one RFC 3339 timestamp format of synthrec: UTC, whole seconds, ``Z`` (as Kubernetes writes them)."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_stamp(at: datetime | None = None) -> str:
    """``at`` (default: now) as ``2026-01-02T03:04:05Z``."""
    moment = (at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    return moment.isoformat().replace("+00:00", "Z")
