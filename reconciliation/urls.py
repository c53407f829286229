"""Dispute API routes, mounted at /api/ by bookme/urls.py beside the booking routes of escrow."""
from django.urls import path

from . import api

urlpatterns = [
    path(
        "bookings/<str:booking_id>/dispute/",
        api.BookingDisputeViewSet.as_view({"get": "retrieve", "post": "create"}),
        name="booking-dispute",
    ),
]
