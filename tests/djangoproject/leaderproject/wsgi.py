"""WSGI entry point, for gunicorn: ``gunicorn leaderproject.wsgi``."""
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "leaderproject.settings")
application = get_wsgi_application()
