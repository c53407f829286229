"""API routes that answer with and without their trailing slash.

Clients written to the BookMe guide call `/api/bookings/{id}/authorize-payment`; Django's
APPEND_SLASH would answer them with a redirect, which drops a POST's body. So every API route
matches both forms itself, and the OpenAPI schema (drf-spectacular reads the regex the way
Django's admindocs does, dropping the `?`) shows the one canonical path, with the slash.
"""
from __future__ import annotations

from django.urls import re_path
from rest_framework.routers import SimpleRouter

OPTIONAL_SLASH = "/?"


class OptionalSlashRouter(SimpleRouter):
    """DRF's SimpleRouter whose routes end in an optional slash (its `trailing_slash` argument
    only takes on/off, so the pattern is set after it)."""

    def __init__(self):
        super().__init__()
        self.trailing_slash = OPTIONAL_SLASH


def optional_slash_path(route_regex: str, view, *, name: str):
    """`re_path` for `route_regex` (no anchors, no trailing slash, e.g.
    r"bookings/(?P<booking_id>[^/]+)/dispute") matching it with or without the slash."""
    return re_path(rf"^{route_regex}{OPTIONAL_SLASH}$", view, name=name)
