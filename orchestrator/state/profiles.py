"""The profiler's cache of measured figures (table ``profile_cache``), one row per hardware fingerprint.

Whether a cached profile is still valid (age, torch version, thoroughness) is the profiler's decision
(``lhorch.orchestrator.machine.profiler``); this module only keeps the rows.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import ValidationError

from lhorch.orchestrator.core.profile import Profile
from lhorch.orchestrator.state.store import Store, iso, parse_iso


def get(store: Store, fingerprint: str) -> Profile | None:
    """The cached profile of ``fingerprint``; None when there is none or it cannot be read."""
    rows = store.query("SELECT profile_json FROM profile_cache WHERE fingerprint=?", (fingerprint,))
    if not rows:
        return None
    try:
        return Profile.model_validate_json(rows[0]["profile_json"])
    except ValidationError:
        return None  # written by an older/newer lhorch with another layout: measure again


def put(store: Store, profile: Profile) -> None:
    """Keep ``profile`` as the cached one of its fingerprint (replacing an earlier one)."""
    with store.tx() as c:
        c.execute("INSERT OR REPLACE INTO profile_cache(fingerprint, measured_at, profile_json) VALUES (?,?,?)",
                  (profile.fingerprint, iso(profile.measured_at), profile.model_dump_json()))


def cached(store: Store) -> list[tuple[str, datetime | None]]:
    """(fingerprint, measured_at) of every cached profile, newest first."""
    rows = store.query("SELECT fingerprint, measured_at FROM profile_cache ORDER BY measured_at DESC")
    return [(r["fingerprint"], parse_iso(r["measured_at"])) for r in rows]
