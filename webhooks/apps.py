from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    name = "webhooks"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Webhooks"

    def ready(self):
        from notifications.signals import notifications_published

        from . import metrics, receivers

        notifications_published.connect(receivers.fan_out_on_publish, dispatch_uid="webhooks.fan_out_on_publish")
        metrics.register_collector()  # deliveries PENDING and DEAD on /metrics
