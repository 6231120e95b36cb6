"""WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'`` (settings from BPM_* variables)."""

from api import create_app

app = create_app(record_policy=True)
