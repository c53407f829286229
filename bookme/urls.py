from django.contrib import admin
from django.urls import include, path

from . import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health/", views.health, name="health"),
    path("api/health/live/", views.health_live, name="health-live"),
    path("api/schema/", views.SchemaView.as_view(), name="schema"),
    path("api/docs/", views.DocsView.as_view(url_name="schema"), name="docs"),
    path("api/", include("escrow.urls")),
    path("api/", include("reconciliation.urls")),
    path("metrics", views.metrics, name="prometheus-django-metrics"),
]
