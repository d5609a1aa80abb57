"""Event (and push) timestamps and the dates they must respect, shared by the CSV importer and the HTTP API.

- `iso_timestamp`: the one reading of a timestamp (pydantic `BeforeValidator`): an ISO 8601 string
  (`2025-01-02T10:00:00`, optional offset or `Z`; Python's `datetime.fromisoformat`), or a `datetime` from Python
  code. Anything else (Unix seconds as a number or a string, `2025/01/02`) is a ValueError, so that the importer and
  `POST /events` accept exactly the same spellings (pydantic's lax mode alone would take Unix seconds in the API).
- `date_problem`: an event is refused when its date is before the policy's publish date (nobody can act on a
  notice not yet published) or before the enterprise's registration. The date compared is the calendar date written
  in the timestamp (with an offset, the date in that offset; `2025-03-01T07:00:00+08:00` is 1 March, although it is
  stored as 2025-02-28T23:00 UTC), since publish and registration dates are the platform's local dates. An imported
  push's `created_at` is held to the same dates (nothing is pushed before it is published, or to an enterprise not yet
  registered); the reason names the column (`ts:` or `created_at:`).
"""

from __future__ import annotations

from datetime import date, datetime

ISO_HINT = "YYYY-MM-DDTHH:MM:SS, optional offset"


def iso_timestamp(value):
    """An ISO 8601 string -> datetime (aware when it has an offset); a datetime passes; anything else: ValueError."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.strip())
        except ValueError:
            pass
    raise ValueError(f"{value!r} is not an ISO 8601 timestamp ({ISO_HINT})")


def date_problem(day: date, policy_id: str, published: date | None, enterprise_id: str,
                 registered: date | None, field: str = "ts") -> str | None:
    """Why an event (or push: `field` "created_at") of `enterprise_id` on `policy_id` dated `day` cannot have happened,
    or None."""
    if published is not None and day < published:
        return f"{field}: {day.isoformat()} is before policy {policy_id!r} was published ({published.isoformat()})"
    if registered is not None and day < registered:
        return f"{field}: {day.isoformat()} is before enterprise {enterprise_id!r} registered ({registered.isoformat()})"
    return None
