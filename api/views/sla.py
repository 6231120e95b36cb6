from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from sqlalchemy import select

from api.auth import current_actor
from api.context import bpm
from api.schemas import (
    BusinessHoursSchema,
    CalendarDayIn,
    CalendarDayOut,
    CalendarQuery,
    CoverageOut,
    PolicyPreviewOut,
    PolicySavedOut,
    PolicySchema,
    RescheduleIn,
    ScheduleIn,
    ScheduleOut,
    TimerOut,
    TimerQuery,
    YearIn,
    YearOut,
)
from engine.errors import InvalidInput
from engine.models import BusinessHoursRow, CalendarDay, SlaPolicy
from engine.sla import admin as sla_admin
from engine.timers import firing, schedules

PREFIX = ""
blp = Blueprint("sla", __name__, description="SLA policies, business calendars, timers and schedules")


@blp.route("/sla/policies")
class Policies(MethodView):
    @blp.response(200, PolicySchema(many=True))
    def get(self) -> Any:
        """All SLA policies in matching order (first match wins)."""
        current_actor()
        with bpm().db.transaction() as session:
            return list(session.execute(select(SlaPolicy).order_by(SlaPolicy.position, SlaPolicy.id)).scalars())


@blp.route("/sla/policies/<string(maxlength=128):key>")
class Policy(MethodView):
    @blp.arguments(PolicySchema)
    @blp.response(200, PolicySavedOut)
    def put(self, body: dict[str, Any], key: str) -> Any:
        """Create or change a policy. Open tasks it now matches get new due dates and
        milestones (no diagram is redeployed); the answer says how many."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            policy, count = sla_admin.upsert_policy(session, ctx.runtime, data={**body, "key": key}, actor=actor)
            return {"policy": policy, "recomputed_tasks": count}


PREVIEWED_CHANGES = 100


@blp.route("/sla/policies/<string(maxlength=128):key>/preview")
class PolicyPreview(MethodView):
    @blp.arguments(PolicySchema)
    @blp.response(200, PolicyPreviewOut)
    def post(self, body: dict[str, Any], key: str) -> Any:
        """What ``PUT /sla/policies/{key}`` with this body would do, changing nothing (a dry
        run, process owner): the same checks, the due date and milestones of a task it
        matches created now, and the open tasks whose due dates would move, by how much."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            preview = sla_admin.preview_policy(session, ctx.runtime, data={**body, "key": key}, actor=actor,
                                               now=ctx.runtime.now())

        def seconds(delta: timedelta | None) -> float | None:
            return None if delta is None else delta.total_seconds()

        return {"start": preview.start, "due": preview.due, "incomplete": preview.incomplete,
                "at_risk": preview.at_risk, "milestones": [m.__dict__ for m in preview.milestones],
                "open_tasks": preview.open_tasks, "changed_tasks": len(preview.changes), "gained": preview.gained,
                "lost": preview.lost, "shift_min_seconds": seconds(preview.shift_min),
                "shift_median_seconds": seconds(preview.shift_median),
                "shift_max_seconds": seconds(preview.shift_max),
                "changes": [{**m.__dict__, "shift_seconds": seconds(m.shift)}
                            for m in preview.changes[:PREVIEWED_CHANGES]]}


@blp.route("/calendar/days")
class CalendarDays(MethodView):
    @blp.arguments(CalendarQuery, location="query")
    @blp.response(200, CalendarDayOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Working and trading days between ``from`` and ``to`` (at most a year)."""
        current_actor()
        if query["end"] < query["start"] or query["end"] - query["start"] > timedelta(days=366):
            raise InvalidInput("ask for at most one year, with from <= to")
        with bpm().db.transaction() as session:
            return list(session.execute(
                select(CalendarDay).where(CalendarDay.day >= query["start"], CalendarDay.day <= query["end"])
                .order_by(CalendarDay.day)).scalars())


@blp.route("/calendar/days/<day:day>")
class CalendarDayEdit(MethodView):
    @blp.arguments(CalendarDayIn)
    @blp.response(200, CoverageOut)
    def put(self, body: dict[str, Any], day: str) -> Any:
        """Add or correct a day (e.g. next year's holidays, announced each November) and
        recompute the due dates of open tasks. ``day`` is YYYY-MM-DD from 1990 to 2099."""
        ctx = bpm()
        actor = current_actor()
        try:
            parsed = date.fromisoformat(day)
        except ValueError:
            raise InvalidInput(f"{day!r} is not a date (YYYY-MM-DD)") from None
        with ctx.db.transaction() as session:
            sla_admin.set_day(session, day=parsed, working=body["working"], trading=body["trading"], name=body["name"],
                        actor=actor, now=ctx.runtime.now())
            count = sla_admin.recompute(session, ctx.runtime, now=ctx.runtime.now())
            moved = schedules.recompute(session, ctx.runtime, now=ctx.runtime.now())
            cover = sla_admin.coverage(session, now=ctx.runtime.now())
            return {**cover.__dict__, "recomputed_tasks": count, "moved_schedules": moved}


@blp.route("/calendar/years/<int:year>")
class CalendarYear(MethodView):
    @blp.arguments(YearIn)
    @blp.response(200, YearOut)
    def put(self, body: dict[str, Any], year: int) -> Any:
        """A year's official notice as one table: its holidays and make-up working days (调休),
        every other day ordinary; the year's days are replaced whole (process owner, audited),
        then open tasks' due dates and the schedules' next runs are recomputed."""
        ctx = bpm()
        actor = current_actor()
        now = ctx.runtime.now()
        with ctx.db.transaction() as session:
            imported = sla_admin.import_year(session, year=year, days=body["days"], complete=body["complete"],
                                             actor=actor, now=now)
            count = sla_admin.recompute(session, ctx.runtime, now=now)
            moved = schedules.recompute(session, ctx.runtime, now=now)
            cover = sla_admin.coverage(session, now=now)
            return {**cover.__dict__, "year": year, "holidays": imported.holidays, "workdays": imported.workdays,
                    "recomputed_tasks": count, "moved_schedules": moved}


@blp.route("/calendar/hours")
class BusinessHoursList(MethodView):
    @blp.response(200, BusinessHoursSchema(many=True))
    def get(self) -> Any:
        """Named business hours (used by WD/TD/WH targets and for the clock's start)."""
        current_actor()
        with bpm().db.transaction() as session:
            return list(session.execute(select(BusinessHoursRow).order_by(BusinessHoursRow.name)).scalars())


@blp.route("/calendar/hours/<string(maxlength=64):name>")
class BusinessHoursEdit(MethodView):
    @blp.arguments(BusinessHoursSchema)
    @blp.response(200, BusinessHoursSchema)
    def put(self, body: dict[str, Any], name: str) -> Any:
        """Define or change business hours, e.g. with a lunch break."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return sla_admin.set_business_hours(session, name=name, periods=body["periods"], tz=body["tz"], actor=actor,
                                          now=ctx.runtime.now())


@blp.route("/calendar/coverage")
class Coverage(MethodView):
    @blp.response(200, CoverageOut)
    def get(self) -> Any:
        """The range the calendar knows, and how many open tasks have a due date computed
        beyond it (flagged ``calendar_incomplete``)."""
        current_actor()
        with bpm().db.transaction() as session:
            return sla_admin.coverage(session, now=bpm().runtime.now()).__dict__


@blp.route("/timers")
class Timers(MethodView):
    @blp.arguments(TimerQuery, location="query")
    @blp.response(200, TimerOut(many=True))
    def get(self, query: dict[str, Any]) -> Any:
        """Waiting timers, soonest first (BPMN timers, SLA milestones, schedules); for
        supervisors and process owners: the timers of the cases they may read, and the
        schedules' to process owners and supervisors at headquarters."""
        actor = current_actor()
        with bpm().db.transaction() as session:
            return firing.visible(session, actor=actor, status=query["status"])


@blp.route("/timers/<int:timer_id>/reschedule")
class Reschedule(MethodView):
    @blp.arguments(RescheduleIn)
    @blp.response(200, TimerOut)
    def post(self, body: dict[str, Any], timer_id: int) -> Any:
        """Move a waiting timer (supervisor; audited)."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return firing.reschedule(session, ctx.runtime, timer_id=timer_id, due_at=body["due_at"], actor=actor)


@blp.route("/schedules")
class Schedules(MethodView):
    @blp.response(200, ScheduleOut(many=True))
    def get(self) -> Any:
        """Scheduled process starts."""
        current_actor()
        with bpm().db.transaction() as session:
            return schedules.get_all(session)

    @blp.arguments(ScheduleIn)
    @blp.response(201, ScheduleOut)
    def post(self, body: dict[str, Any]) -> Any:
        """Start a process on a business-calendar rule, e.g. the first working day of each
        quarter at 09:00."""
        ctx = bpm()
        actor = current_actor()
        with ctx.db.transaction() as session:
            return schedules.create(session, ctx.runtime, actor=actor, **body)
