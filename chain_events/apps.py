from django.apps import AppConfig


class ChainEventsConfig(AppConfig):
    name = "chain_events"
    default_auto_field = "django.db.models.BigAutoField"
    verbose_name = "Chain sync"

    def ready(self):
        from . import metrics

        metrics.register_collector()
