"""Celery application. Configuration comes from Django settings (CELERY_* names)."""
import logging
import os

from celery import Celery
from celery.signals import worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookme.settings")

app = Celery("bookme")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

log = logging.getLogger(__name__)


@worker_init.connect
def start_worker_metrics_server(**_):
    """Serve the worker's prometheus registry: the chain and reconciliation counters grow here,
    not in the web process. A port already taken is logged, never fatal to the worker."""
    from django.conf import settings
    from prometheus_client import start_http_server

    port = settings.WORKER_METRICS_PORT
    if not port:
        return
    try:
        start_http_server(port, addr="127.0.0.1")
    except OSError as exc:
        log.warning("worker metrics not served on 127.0.0.1:%s: %s", port, exc)
    else:
        log.info("worker metrics on http://127.0.0.1:%s/metrics", port)
