"""What the audit trail records of people: who acted (the actor label) and how long a reason
they give may be (API cancellations and console actions alike)."""
from __future__ import annotations

MAX_REASON_LENGTH = 500


def staff_actor(user) -> str:
    """The audit label of a staff user ("staff:<username>"), as the API and the console store it."""
    return f"staff:{user.get_username()}"
