"""WSGI entry point for gunicorn (`gunicorn servicedesk.wsgi`)."""

import os

from django.core.wsgi import get_wsgi_application

from servicedesk.configuration import keep_new_files_private

# Each gunicorn worker imports this module before it serves: what the web writes (SQLite,
# broker messages, attachments) is for the desk's own user only.
keep_new_files_private()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "servicedesk.settings")

application = get_wsgi_application()
