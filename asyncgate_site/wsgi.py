import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "asyncgate_site.settings")

application = get_wsgi_application()

# After setup: the check needs settings loaded.
from asyncgate_site.checks import refuse_development_secret_key  # noqa: E402

refuse_development_secret_key()
