from __future__ import annotations

from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

from api.auth import current_actor
from api.context import bpm
from api.schemas import (
    ComplaintFiguresOut,
    FigureQuery,
    NewAccountCallbacksOut,
    OverdueQuery,
    PeriodAssessmentOut,
    PeriodicCallbacksOut,
    RetentionFiguresOut,
    SatisfactionQuery,
    SatisfactionRowOut,
    TaskFiguresOut,
)
from engine.brokerage import figures

PREFIX = "/figures"
blp = Blueprint("figures", __name__,
                description="Supervisors' figures, for supervisors, compliance, branch management, HQ "
                            "departments and process owners; branch staff see their own "
                            "branch. Definitions: docs/figures.md.")


def _scope(query: dict[str, Any]) -> figures.Scope:
    return figures.scope_for(current_actor(), first=query["first"], last=query["last"], branch=query["branch"],
                             group=query["group"], now=bpm().runtime.now())


@blp.route("/overdue-tasks")
class OverdueTasks(MethodView):
    @blp.arguments(OverdueQuery, location="query")
    @blp.response(200, TaskFiguresOut)
    def get(self, query: dict[str, Any]) -> Any:
        """Open tasks overdue and at risk (as of the period's end, or now), tasks closed late
        in the period, with ageing buckets; by branch, group, process, step, assignee."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.overdue_tasks(session, scope=scope, by=query["by"], now=ctx.runtime.now(),
                                         config=figures.load_config(session), buckets=query["buckets"])


@blp.route("/complaints")
class Complaints(MethodView):
    @blp.arguments(FigureQuery, location="query")
    @blp.response(200, ComplaintFiguresOut)
    def get(self, query: dict[str, Any]) -> Any:
        """Resolution time (median, p90) and on-time rate by severity; 12386 feedback on time."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.complaint_figures(session, scope=scope, now=ctx.runtime.now(),
                                             config=figures.load_config(session))


@blp.route("/retention")
class Retention(MethodView):
    @blp.arguments(FigureQuery, location="query")
    @blp.response(200, RetentionFiguresOut)
    def get(self, query: dict[str, Any]) -> Any:
        """Retention attempt and success rates, and the guard metric (obstruction, late execution)."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.retention_figures(session, scope=scope, now=ctx.runtime.now())


@blp.route("/callbacks/new-accounts")
class NewAccountCallbacks(MethodView):
    @blp.arguments(FigureQuery, location="query")
    @blp.response(200, NewAccountCallbacksOut)
    def get(self, query: dict[str, Any]) -> Any:
        """New-account callbacks completed within one calendar month (target 100 %)."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.new_account_callbacks(session, scope=scope, now=ctx.runtime.now(),
                                                 config=figures.load_config(session))


@blp.route("/callbacks/periodic")
class PeriodicCallbacks(MethodView):
    @blp.arguments(FigureQuery, location="query")
    @blp.response(200, PeriodicCallbacksOut)
    def get(self, query: dict[str, Any]) -> Any:
        """Clients called back periodically against 10 % of the prior year-end active clients."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.periodic_callbacks(session, scope=scope, config=figures.load_config(session))


@blp.route("/satisfaction")
class Satisfaction(MethodView):
    @blp.arguments(SatisfactionQuery, location="query")
    @blp.response(200, SatisfactionRowOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Satisfaction scores (complaint follow-up, callback questionnaire) by branch or group."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.satisfaction(session, scope=scope, by=query["by"], config=figures.load_config(session))


@blp.route("/group-assessment")
class GroupAssessment(MethodView):
    @blp.arguments(FigureQuery, location="query")
    @blp.response(200, PeriodAssessmentOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Service groups per snapshot period: growth (new money, appreciation), turnover,
        referrals, score and rank."""
        ctx = bpm()
        scope = _scope(query)
        with ctx.db.reading() as session:
            return figures.group_assessment(session, scope=scope, config=figures.load_config(session))
