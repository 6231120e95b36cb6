"""The HTTP adapter: Flask app factory, REST API under /api/v1, worklist pages."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from api import errors, guard, openapi
from api.context import BpmContext
from engine.access import field_policy
from engine.access.signin import Throttle
from engine.bootstrap import build_runtime, rq_scheduler
from engine.config import Settings
from engine.db import Database
from engine.process.runtime import Runtime


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None,
               database: Database | None = None, record_policy: bool = False) -> Flask:
    """``record_policy``: put the field policy in the audit trail if it changed since the last
    start (``field_policy.record_change``); the serving entry points do, tests need not."""
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=25 * 1024 * 1024,
        JSON_AS_ASCII=False,
        API_TITLE="Brokerage client-service BPM",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/api/v1",
        OPENAPI_JSON_PATH="openapi.json",
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        # Behind a reverse proxy every request comes from the proxy's address: the client's is
        # in X-Forwarded-For, set by the proxies named trusted (sign-in counts failures per address).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]
    if record_policy:  # serving: production keys its audit trail (engine.audit)
        settings.require_audit_key()
    database = database or Database(settings.database_url, audit_key=settings.audit_key,
                                    read_url=settings.read_database_url)
    if runtime is None:
        # Under gunicorn, new timers are announced to rq; `bpm worker` fires them.
        runtime = build_runtime(settings, scheduler=rq_scheduler(settings))
    # Field visibility (docs/domain.md#case-visibility) is data beside the diagrams; an invalid
    # policy stops the app here (FieldPolicyInvalid names each problem) instead of serving case
    # data unscreened.
    policy = field_policy.load_directory(settings.workflows_dir / field_policy.DIRECTORY)
    if record_policy:
        with database.transaction() as session:
            field_policy.record_change(session, policy, at=runtime.now(), actor="system")
    app.extensions["bpm"] = BpmContext(settings=settings, db=database, runtime=runtime,
                                       throttle=Throttle.from_settings(settings), field_policy=policy)
    guard.register(app)
    api = errors.ProblemApi(app, spec_kwargs={
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
        "extra_plugins": [openapi.ErrorAnswers()],
    })
    openapi.install(api)
    errors.register(app)

    from api.views import (
        auth,
        deployments,
        figures,
        instances,
        messages,
        migrations,
        notifications,
        registry,
        sla,
        tasks,
    )

    for module in (auth, deployments, migrations, instances, tasks, messages, sla, registry, figures, notifications):
        api.register_blueprint(module.blp, url_prefix=f"/api/v1{module.PREFIX}")

    from worklist_ui import register as register_pages

    register_pages(app)
    return app
