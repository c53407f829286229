"""Dispute API routes, mounted at /api/ by bookme/urls.py beside the booking routes of escrow."""
from common.routes import optional_slash_path

from . import api

urlpatterns = [
    optional_slash_path(
        r"bookings/(?P<booking_id>[^/]+)/dispute",
        api.BookingDisputeViewSet.as_view({"get": "retrieve", "post": "create"}),
        name="booking-dispute",
    ),
]
