"""WSGI entry point: `gunicorn fleetsite.wsgi`."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fleetsite.settings")
application = get_wsgi_application()
