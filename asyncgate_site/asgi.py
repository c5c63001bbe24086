import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asyncgate_site.settings")

application = get_asgi_application()

# After setup: the check needs settings loaded.
from asyncgate_site.checks import refuse_development_secret_key  # noqa: E402

refuse_development_secret_key()
