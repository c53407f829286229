import os

from django.core.wsgi import get_wsgi_application

# This entry point is the web process whatever the environment says: it never holds a key that
# sends transactions (settings refuse one: common.config.KEYLESS_ROLES).
os.environ["BOOKME_PROCESS_ROLE"] = "web"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bookme.settings")
application = get_wsgi_application()
