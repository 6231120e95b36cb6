"""WSGI entry point for gunicorn: ``gunicorn 'api.wsgi:app'`` (settings from BPM_* variables).

This is production: it does not start without ``BPM_SECRET_KEY`` (``bpm serve`` does)."""

from api import create_app
from engine.config import Settings

settings = Settings.from_env()
settings.require_secret_key("the API under gunicorn (api.wsgi)")
app = create_app(settings, record_policy=True)
