from django.urls import path

from .consumers import BookingStreamConsumer

websocket_urlpatterns = [
    path("ws/bookings/", BookingStreamConsumer.as_asgi()),
]
