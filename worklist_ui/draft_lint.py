"""What the draft editor's lint while drawing (bpmnlint in the browser) needs from the server:
the names a diagram may use (candidate groups, service task topics, SLA policy keys, the
draft's forms) and the safe evaluator's verdict on expressions, which only the server can
give. The deploy check (``owners.draft_check``) stays the authority; this lint is the early
warning, so an owner sees a mistake on the element while drawing it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask_babel import gettext
from flask_login import login_required
from sqlalchemy import select

from api.context import bpm
from engine import errors
from engine.access.identity import group_keys
from engine.bpmn.lint import DYNAMIC_GROUP_PREFIXES
from engine.models import SlaPolicy
from engine.process import catalogue, drafts
from worklist_ui.owners import _json
from worklist_ui.session import actor

MAX_EXPRESSIONS = 500  # a large diagram has a few hundred; more is not a diagram's
MAX_EXPRESSION_CHARS = 4000


def install(pages: Blueprint) -> None:
    pages.add_url_rule("/processes/<string:key>/draft/lint-context", endpoint="draft_lint_context",
                       view_func=login_required(lint_context), methods=["GET"])
    pages.add_url_rule("/processes/<string:key>/draft/expressions", endpoint="draft_expressions",
                       view_func=login_required(expressions), methods=["POST"])


def lint_context(key: str) -> Any:
    def run() -> Any:
        ctx = bpm()
        with ctx.db.transaction() as db:
            draft = drafts.get(db, key, actor=actor())
            groups = sorted(group_keys(db))
            policies = sorted(db.execute(select(SlaPolicy.key).where(SlaPolicy.active.is_(True))).scalars())
        response = jsonify({"groups": groups, "group_prefixes": list(DYNAMIC_GROUP_PREFIXES),
                            "topics": ctx.runtime.services.names(), "policies": policies,
                            "forms": sorted(draft.forms), "allow_scripts": ctx.runtime.settings.allow_script_tasks})
        response.headers["Cache-Control"] = "no-store"
        return response
    return _json(run)


def expressions(key: str) -> Any:
    """``{"expressions": [...]}`` → ``{"verdicts": {expression: null or why it is refused}}``,
    by the same check the deploy lint runs (``SafeEvaluator.check``)."""
    def run() -> Any:
        ctx = bpm()
        catalogue.require_owner(actor())
        body = request.get_json(silent=True)
        sent = body.get("expressions") if isinstance(body, dict) else None
        if not isinstance(sent, list) or not all(isinstance(e, str) for e in sent):
            raise errors.InvalidInput(gettext("Send {\"expressions\": [text, …]}"))
        if len(sent) > MAX_EXPRESSIONS:
            raise errors.InvalidInput(gettext("At most %(num)d expressions at once", num=MAX_EXPRESSIONS))
        verdicts: dict[str, str | None] = {}
        for expression in sent:
            if len(expression) > MAX_EXPRESSION_CHARS:
                verdicts[expression] = gettext("longer than %(num)d characters", num=MAX_EXPRESSION_CHARS)
                continue
            try:
                ctx.runtime.evaluator.check(expression)
                verdicts[expression] = None
            except errors.ExpressionError as exc:
                verdicts[expression] = exc.message
        return jsonify({"verdicts": verdicts})
    return _json(run)
