from django.contrib import admin
from django.urls import include, path

from common.routes import optional_slash_path
from reconciliation.transaction_api import TransactionView

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    # Every API path answers with and without its trailing slash (common.routes).
    optional_slash_path("api/health", views.health, name="health"),
    optional_slash_path("api/health/live", views.health_live, name="health-live"),
    optional_slash_path("api/schema", views.SchemaView.as_view(), name="schema"),
    optional_slash_path("api/docs", views.DocsView.as_view(url_name="schema"), name="docs"),
    path("api/", include("escrow.urls")),
    path("api/", include("reconciliation.urls")),
    optional_slash_path("api/transactions/(?P<tx_hash>[^/]+)", TransactionView.as_view(), name="transaction"),
    path("metrics", views.metrics, name="prometheus-django-metrics"),
]
