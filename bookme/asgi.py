"""ASGI entry point (Procfile `asgi:`, uvicorn): the live booking stream at /ws/bookings/ over
WebSocket, and the same Django views as bookme/wsgi.py over HTTP."""
import os

# Like bookme/wsgi.py: this entry point is the web process, which never holds a key that sends
# transactions (common.config.KEYLESS_ROLES).
os.environ["BOOKME_PROCESS_ROLE"] = "web"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookme.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_asgi_app = get_asgi_application()  # before importing consumers: it sets Django up

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from notifications.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
