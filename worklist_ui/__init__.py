"""The worklist pages: sign in, inbox, task page with its form, case page with the diagram,
notifications. Server-rendered (Jinja, htmx, a little Alpine.js), in Chinese by default and
in English.

An adapter like the API: every page calls the same engine services with the signed-in
person as the actor, so access, masking, the field policy and recusal are decided in the
engine, once, for both. Sessions are cookies holding the person's sign-in token (the same
tokens as the API: expiry and revocation apply alike); every form and htmx request carries
a CSRF token.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from flask import Flask
from flask_babel import Babel
from flask_login import LoginManager
from flask_wtf.csrf import CSRFProtect

from worklist_ui import i18n, session
from worklist_ui.views import blp

HERE = Path(__file__).resolve().parent


def register(app: Flask) -> None:
    settings = app.extensions["bpm"].settings
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
        REMEMBER_COOKIE_HTTPONLY=True,
        REMEMBER_COOKIE_SAMESITE="Lax",
        REMEMBER_COOKIE_SECURE=settings.secure_cookies,
        PERMANENT_SESSION_LIFETIME=session.SESSION_LIFETIME,
        # The pages check the token themselves (the API's bearer calls need none).
        WTF_CSRF_CHECK_DEFAULT=False,
        WTF_CSRF_TIME_LIMIT=int(session.SESSION_LIFETIME / timedelta(seconds=1)),
        BABEL_DEFAULT_LOCALE=i18n.DEFAULT,
        BABEL_DEFAULT_TIMEZONE="Asia/Shanghai",
        BABEL_TRANSLATION_DIRECTORIES=str(HERE / "translations"),
    )
    csrf = CSRFProtect(app)
    app.extensions["bpm_csrf"] = csrf
    login = LoginManager(app)
    login.login_view = "pages.login"
    login.login_message = ""
    login.user_loader(session.load_user)
    Babel(app, locale_selector=i18n.select_locale, timezone_selector=lambda: "Asia/Shanghai")
    i18n.install(app)
    app.register_blueprint(blp)
