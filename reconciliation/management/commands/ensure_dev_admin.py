"""Create the local development superuser admin/admin (DEBUG only; does nothing otherwise)."""
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create the local admin/admin superuser when DJANGO_DEBUG is on."

    def handle(self, *args, **options):
        if not settings.DEBUG:
            self.stdout.write("DJANGO_DEBUG is off: no development admin created")
            return
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            return
        User.objects.create_superuser("admin", "admin@localhost", "admin")
        self.stdout.write("created superuser admin/admin (development only)")
