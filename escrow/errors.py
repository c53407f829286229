"""Errors of the escrow domain that callers (API, admin, tasks) turn into answers.

`escrow.state.IllegalTransition` is the third one; it lives beside the state machine.
"""
from __future__ import annotations


class InvalidInput(ValueError):
    """A value given to a service breaks a booking rule; `field` names the value, the message says why."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class BookingConflict(Exception):
    """The request is well-formed but the booking's current state does not allow it (HTTP 409)."""

    def __init__(self, message: str, *, booking=None):
        self.booking = booking
        super().__init__(message)


class NotPermitted(Exception):
    """The caller can see the booking but their role does not allow this action (HTTP 403)."""
