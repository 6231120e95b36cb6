"""The pages. Each handler authenticates through the session, calls engine services with the
signed-in person as the actor, and renders; changes are POST → service → redirect (or, for
htmx, the changed fragment). Nothing here decides who may see or do what: the engine does.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    flash,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select
from werkzeug.exceptions import HTTPException

from api.bulk import MAX_TASKS, Outcome, claim_each, escalate_each, reassign_each, remind_each
from api.context import bpm
from api.errors import status_for
from engine import errors
from engine.access import client_access, field_policy
from engine.access.client_access import REVEAL_REASONS, REVEAL_ROLES
from engine.access.masking import mask_text
from engine.access.roles import JOB_ROLES, PROCESS_OWNER, SUPERVISOR
from engine.brokerage import handover
from engine.models import ACTIVE_TASK_STATES, ProcessVersion, User
from engine.process import activity, instances, supervision, tasks, worklist
from engine.sla import clock as sla_clock
from worklist_ui import (
    admin_pages,
    board,
    draft_forms,
    draft_lint,
    figures_page,
    forms,
    i18n,
    owners,
    owners_migration,
)
from worklist_ui.session import actor, sign_in, sign_out

blp = Blueprint("pages", __name__, template_folder="templates", static_folder="static",
                static_url_path="/static/pages")

TABS = ("mine", "group", "team", "watched", "done")
DUE_FILTERS = ("overdue", "at_risk", "today")
PAGE_SIZE = 50
# A tab's badge counts this far and then reads "999+": a queue's length past that tells
# nobody anything more, and counting it all would cost every page view.
COUNT_CAP = 1000


@blp.before_request
def _csrf() -> None:
    # Every state-changing request of the pages, forms and htmx alike, carries the token.
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        current_app.extensions["bpm_csrf"].protect()


@blp.app_context_processor
def _header() -> dict[str, Any]:
    if not current_user or not current_user.is_authenticated:
        return {"unread": 0, "supervisor": False, "owner": False}
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        return {"unread": worklist.unread_count(db, actor=person), "supervisor": person.has_role(SUPERVISOR),
                "owner": person.has_role(PROCESS_OWNER)}


@blp.errorhandler(errors.BpmError)
def _engine_error(exc: errors.BpmError) -> tuple[str, int]:
    status = status_for(exc)
    if status == 401:
        return redirect(url_for("pages.login", next=request.full_path)), 302  # type: ignore[return-value]
    return render_template("error.html", status=status, message=mask_text(exc.message)), status


@blp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> tuple[str, int]:
    return render_template("error.html", status=exc.code or 500, message=exc.description), exc.code or 500


# -- sign in / out, language -----------------------------------------------------------------
@blp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    error, status, retry_after = None, 200, None
    if request.method == "POST":
        username = (request.form.get("username") or "").strip()
        try:
            user = sign_in(username, request.form.get("password") or "")
        except errors.SignInLocked as exc:
            error, status, retry_after = gettext(
                "Too many failed sign-ins: this username is locked for %(wait)s, unless an administrator "
                "unlocks it.", wait=i18n.duration(exc.retry_after)), 429, exc.retry_after
        except errors.SignInThrottled as exc:
            error, status, retry_after = gettext(
                "Too many failed sign-ins: try again in %(wait)s.", wait=i18n.duration(exc.retry_after)), \
                429, exc.retry_after
        except errors.AuthenticationFailed:
            error, status = gettext("Wrong username or password"), 401
        else:
            # A browser-session cookie: the token it holds expires on the server (12 hours),
            # so the cookie needs no expiry of its own.
            login_user(user)
            if user.locale:
                session["locale"] = user.locale
            target = request.args.get("next") or ""
            # Only a path of this site, never an address elsewhere.
            if not target.startswith("/") or target.startswith("//"):
                target = url_for("pages.inbox")
            return redirect(target)
    response = make_response(render_template("login.html", error=error), status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@blp.post("/logout")
def logout() -> Any:
    if current_user.is_authenticated:
        sign_out(current_user.token)
    logout_user()
    session.pop("locale", None)
    return redirect(url_for("pages.login"))


@blp.post("/language")
def language() -> Any:
    chosen = request.form.get("locale") or ""
    if chosen not in i18n.LOCALES:
        abort(400, gettext("Unknown language"))
    session["locale"] = chosen
    if current_user.is_authenticated:
        ctx = bpm()
        with ctx.db.transaction() as db:
            worklist.set_locale(db, actor=actor(), locale=chosen)
        current_user.locale = chosen
    back = request.form.get("next") or url_for("pages.inbox")
    return redirect(back if back.startswith("/") and not back.startswith("//") else url_for("pages.inbox"))


# -- inbox -----------------------------------------------------------------------------------
def _filters() -> dict[str, str]:
    keep = ("tab", "process", "step", "due", "q", "client", "group", "branch", "assignee", "within", "sort")
    return {k: v for k in keep if (v := (request.args.get(k) or "").strip())}


def _query(filters: dict[str, str], tab: str, offset: int, limit: int) -> tasks.InboxQuery:
    within = filters.get("within")
    try:
        hours = int(within) if within else None
    except ValueError:
        raise errors.InvalidInput(gettext("Due within is a number of hours")) from None
    due = filters.get("due")
    key = filters.get("q") or None
    return tasks.InboxQuery(
        assignee_me=tab == "mine", candidate_me=tab == "group",
        overdue=due == "overdue", at_risk=due == "at_risk",
        due_within=timedelta(hours=hours) if hours else (timedelta(hours=24) if due == "today" else None),
        process_key=filters.get("process"), business_key=key, element_id=filters.get("step"),
        client_id=filters.get("client"), group=filters.get("group"), branch=filters.get("branch"),
        assignee=filters.get("assignee"), sort=filters.get("sort", "due"), limit=limit, offset=offset,
    )


@blp.get("/")
@login_required
def inbox() -> Any:
    filters = _filters()
    tab = filters.get("tab", "mine")
    person = actor()
    supervisor = person.has_role(SUPERVISOR)
    if tab not in TABS or (tab == "team" and not supervisor):
        abort(400, gettext("Unknown tab"))
    offset = max(int(request.args.get("offset") or 0), 0) if (request.args.get("offset") or "0").isdigit() else 0
    fmt = request.args.get("format")
    if fmt is not None:
        if fmt not in ("csv", "xlsx") or tab in ("watched", "done"):
            abort(400, gettext("A list of open tasks exports as csv or xlsx"))
        return board.export_tasks(_query(filters, tab, 0, 1), filters, fmt)
    ctx = bpm()
    now = ctx.runtime.now()
    with ctx.db.transaction() as db:
        counts = {
            "mine": tasks.count(db, actor=person, query=tasks.InboxQuery(assignee_me=True), now=now, cap=COUNT_CAP),
            "group": tasks.count(db, actor=person, query=tasks.InboxQuery(candidate_me=True), now=now, cap=COUNT_CAP),
            "watched": worklist.watched(db, actor=person, now=now, limit=1)[1],
            "done": worklist.done(db, actor=person, now=now, limit=1)[1],
        }
        if supervisor:
            # A supervisor's view: every task they may see (their branch, or the firm at HQ).
            counts["team"] = tasks.count(db, actor=person, query=tasks.InboxQuery(), now=now, cap=COUNT_CAP)
        if tab == "watched":
            found, total = worklist.watched(db, actor=person, now=now, limit=PAGE_SIZE, offset=offset)
        elif tab == "done":
            found, total = worklist.done(db, actor=person, now=now, limit=PAGE_SIZE, offset=offset)
        else:
            # One row past the page says whether there is a next one, without counting them all.
            found, _ = tasks.inbox(db, actor=person, query=_query(filters, tab, offset, PAGE_SIZE + 1), now=now,
                                   count_total=False)
            total = offset + len(found)
            found = found[:PAGE_SIZE]
        rows = worklist.rows_of(db, found, now=now)
        views = worklist.saved_views(db, actor=person)
        processes = sorted({r.task.process_key: r.process_name for r in rows}.items())
    context = {"tab": tab, "supervisor": supervisor,
               "rows": rows, "total": total, "counts": counts, "filters": filters, "views": views,
               "offset": offset, "page_size": PAGE_SIZE, "count_cap": COUNT_CAP, "processes": processes, "now": now,
               "query_string": urlencode(filters), "escalation_targets": _escalation_targets() if supervisor else []}
    if request.headers.get("HX-Request") and request.args.get("fragment") == "rows":
        return render_template("_inbox_rows.html", **context)
    return render_template("inbox.html", **context)


@blp.post("/views")
@login_required
def save_view() -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        worklist.save_view(db, actor=actor(), name=request.form.get("name") or "",
                           query=request.form.get("query") or "", now=ctx.runtime.now())
    flash(gettext("View saved"))
    return redirect(url_for("pages.inbox") + "?" + (request.form.get("query") or ""))


@blp.post("/views/<int:view_id>/delete")
@login_required
def delete_view(view_id: int) -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        worklist.delete_view(db, actor=actor(), view_id=view_id)
    return redirect(url_for("pages.inbox"))


def _claim_one(task_id: int) -> str | None:
    """Claim one task; None, or why not, in the reader's words."""
    return claim_each(bpm(), actor(), [task_id])[0].detail


@blp.post("/tasks/claim")
@login_required
def claim_many() -> Any:
    """Bulk claim: each task claimed in its own transaction, each result reported."""
    ids = [int(v) for v in request.form.getlist("task") if v.isdigit()]
    if not ids:
        flash(gettext("Select the tasks to claim first"), "warning")
    elif len(set(ids)) > MAX_TASKS:
        flash(gettext("At most %(num)d tasks can be claimed at once", num=MAX_TASKS), "warning")
        ids = []
    outcomes = claim_each(bpm(), actor(), ids)
    claimed = sum(1 for outcome in outcomes if outcome.done)
    if claimed:
        flash(gettext("Claimed %(num)d task(s)", num=claimed))
    for reason in _refusals(outcomes):
        flash(gettext("Not claimed: %(reason)s", reason=reason), "warning")
    return redirect(url_for("pages.inbox") + "?" + urlencode(_filters()))


def _escalation_targets() -> list[tuple[str, str]]:
    """(value, label) of each level a supervisor escalates to, named as people call it."""
    targets = []
    for target in supervision.ESCALATION_TARGETS:
        role = target.removeprefix("branch:")
        name = JOB_ROLES.get(role, role)
        targets.append((target, gettext("%(role)s of the case's branch", role=name) if target != role else name))
    return targets


def _refusals(outcomes: list[Outcome]) -> list[str]:
    """Each task a bulk command left as it was, with why, as a flash message says it."""
    return [f"#{outcome.task_id}: {outcome.detail}" for outcome in outcomes if not outcome.done]


@blp.post("/tasks/supervise")
@login_required
def supervise() -> Any:
    """A supervisor's reminder, reassignment or escalation of the selected tasks, with a
    reason: each task in its own transaction, each refusal reported."""
    ids = [int(v) for v in request.form.getlist("task") if v.isdigit()]
    action, reason = request.form.get("action"), request.form.get("reason")
    if action not in ("remind", "reassign", "escalate"):
        abort(400, gettext("Choose remind, reassign or escalate"))
    if not ids:
        flash(gettext("Select the tasks first"), "warning")
        return redirect(url_for("pages.inbox") + "?" + urlencode(_filters()))
    if len(set(ids)) > MAX_TASKS:
        abort(400, gettext("At most %(num)d tasks at once", num=MAX_TASKS))
    if action == "remind":
        outcomes = remind_each(bpm(), actor(), ids, reason)
    elif action == "escalate":
        outcomes = escalate_each(bpm(), actor(), ids, reason, (request.form.get("to") or "").strip() or None)
    else:
        outcomes = reassign_each(bpm(), actor(), ids, (request.form.get("username") or "").strip(), reason)
    done = sum(1 for outcome in outcomes if outcome.done)
    if done:
        flash({"remind": gettext("Reminded %(num)d task(s)", num=done),
               "reassign": gettext("Reassigned %(num)d task(s)", num=done),
               "escalate": gettext("Escalated %(num)d task(s)", num=done)}[action])
    for refusal in _refusals(outcomes):
        flash(gettext("Not done: %(reason)s", reason=refusal), "warning")
    return redirect(url_for("pages.inbox") + "?" + urlencode(_filters()))


@blp.post("/tasks/<int:task_id>/claim")
@login_required
def claim(task_id: int) -> Any:
    reason = _claim_one(task_id)
    if request.headers.get("HX-Request"):
        return _row(task_id, reason)
    if reason:
        flash(reason, "warning")
    return redirect(request.form.get("next") or url_for("pages.task", task_id=task_id))


@blp.post("/tasks/<int:task_id>/unclaim")
@login_required
def unclaim(task_id: int) -> Any:
    ctx = bpm()
    reason = None
    try:
        with ctx.db.transaction() as db:
            tasks.unclaim(db, ctx.runtime, task_id=task_id, actor=actor())
    except errors.BpmError as exc:
        reason = mask_text(exc.message)
    if request.headers.get("HX-Request"):
        return _row(task_id, reason)
    if reason:
        flash(reason, "warning")
    return redirect(request.form.get("next") or url_for("pages.task", task_id=task_id))


def _row(task_id: int, reason: str | None) -> Any:
    """One inbox row again, after a change made in place."""
    ctx = bpm()
    with ctx.db.transaction() as db:
        try:
            task = tasks.get(db, task_id, actor=actor())
        except errors.NotFound:
            return Response("", status=200)
        (row,) = worklist.rows_of(db, [task], now=ctx.runtime.now())
    return render_template("_inbox_row.html", row=row, message=reason, tab=request.args.get("tab", "mine"))


# -- task page -------------------------------------------------------------------------------
def _data_rows(db: Any, instance: Any, case: field_policy.ScreenedCase) -> list[forms.DataRow]:
    """What the case-data card lists: the variables the reader may see (the facts, for a
    case whose variables are not loaded), titled by the forms of the case's version."""
    version = db.get(ProcessVersion, instance.process_version_id)
    return forms.readable_data(case.data if case.data is not None else (case.facts or {}),
                               version.forms if version is not None else {})


def _task_context(task_id: int, *, values: dict[str, Any] | None = None,
                  field_errors: dict[str, str] | None = None) -> dict[str, Any]:
    ctx = bpm()
    now = ctx.runtime.now()
    person = actor()
    with ctx.db.transaction() as db:
        task = tasks.get(db, task_id, actor=person)
        instance = instances.get(db, task.instance_id, actor=person)
        schema = tasks.form_of(db, ctx.runtime, task)
        draft = worklist.draft(db, task_id=task_id, actor=person) if values is None else None
        data = instances.data_of(db, ctx.runtime, instance)
        case = field_policy.screen_case(db, ctx.field_policy, actor=person, instance=instance, data=data)
        data_rows = _data_rows(db, instance, case)
        events = field_policy.screen_history(db, ctx.field_policy, actor=person, instance=instance, data=data,
                                             events=instances.history(db, instance.id, actor=person))
        comments = worklist.comments(db, instance_id=instance.id, actor=person)
        names = activity.names(db, ctx.runtime, instance=instance)
        (row,) = worklist.rows_of(db, [task], now=now)
        client = None
        if task.client_id:
            try:
                client = client_access.get_client(db, task.client_id, actor=person, now=now)
            except errors.ClientNotFound:
                client = None
    state, seconds = sla_clock.state(task, now) if task.status in ACTIVE_TASK_STATES else ("none", None)
    fields = forms.fields_of(schema) if schema else []
    shown = forms.draft_values(schema, values if values is not None else draft) if schema else {}
    reveal_fields = [f for f, roles in REVEAL_ROLES.items() if roles and person.groups & roles]
    return {"task": task, "row": row, "instance": instance, "case": case, "data_rows": data_rows, "events": events,
            "comments": comments,
            "client": client, "names": names, "schema": schema, "fields": fields, "values": shown,
            "errors": field_errors or {},
            "sla_state": state, "seconds": seconds, "now": now, "person": person, "has_draft": draft is not None,
            "reveal_fields": reveal_fields, "reveal_reasons": REVEAL_REASONS,
            "alpine_values": json.dumps(shown, ensure_ascii=False)}


@blp.get("/tasks/<int:task_id>")
@login_required
def task(task_id: int) -> Any:
    return render_template("task.html", **_task_context(task_id))


@blp.post("/tasks/<int:task_id>")
@login_required
def complete(task_id: int) -> Any:
    ctx = bpm()
    person = actor()
    try:
        with ctx.db.transaction() as db:
            task = tasks.get(db, task_id, actor=person)
            schema = tasks.form_of(db, ctx.runtime, task)
            validator = (ctx.runtime.form_validator(db, instances.get(db, task.instance_id, actor=person)
                                                    .process_version_id, task.form_key)
                         if task.form_key else None)
    except errors.TaskNotFound:
        winner = _lost_race(task_id)
        if winner is None:
            raise
        flash(winner, "warning")
        return redirect(url_for("pages.inbox"))
    parsed, found = forms.submission(schema, validator, request.form)
    if found:
        return render_template("task.html", **_task_context(task_id, values=parsed.data,
                                                            field_errors=found)), 422
    try:
        with ctx.db.transaction() as db:
            done = tasks.complete(db, ctx.runtime, task_id=task_id, actor=person, data=parsed.data)
            worklist.drop_drafts(db, task_id=task_id)
            following = [t for t in tasks.opened(db, person) if t.instance_id == done.instance_id
                         and t.assignee in (None, person.username)]
    except (errors.TaskNotOpen, errors.NotAssignee, errors.TaskNotFound) as exc:
        flash(_lost_race(task_id) or mask_text(exc.message), "warning")
        return redirect(url_for("pages.inbox"))
    except errors.FormValidationError as exc:
        engine_errors = {e.field: e.message for e in exc.errors}
        return render_template("task.html", **_task_context(task_id, values=parsed.data,
                                                            field_errors=engine_errors)), 422
    flash(gettext("Completed: %(name)s", name=i18n.label(done.name) or done.element_id))
    if following:
        return redirect(url_for("pages.task", task_id=following[0].id))
    return redirect(url_for("pages.inbox"))


def _lost_race(task_id: int) -> str | None:
    """"X completed it first", when someone did and the engine lets this person know."""
    ctx = bpm()
    with ctx.db.transaction() as db:
        winner = tasks.won_by(db, task_id=task_id, actor=actor())
    return gettext("%(who)s completed this task first", who=winner) if winner else None


@blp.post("/tasks/<int:task_id>/draft")
@login_required
def save_draft(task_id: int) -> Any:
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        task = tasks.get(db, task_id, actor=person)
        schema = tasks.form_of(db, ctx.runtime, task) or {"properties": {}}
        worklist.save_draft(db, task_id=task_id, actor=person, data=forms.parse(schema, request.form).data,
                            now=ctx.runtime.now())
    if request.headers.get("HX-Request"):
        return render_template("_saved.html", at=ctx.runtime.now())
    flash(gettext("Draft saved"))
    return redirect(url_for("pages.task", task_id=task_id))


@blp.post("/tasks/<int:task_id>/<any(delegate, assign, pause, resume):action>")
@login_required
def task_action(task_id: int, action: str) -> Any:
    ctx = bpm()
    person = actor()
    with ctx.db.transaction() as db:
        if action in ("delegate", "assign"):
            username = (request.form.get("username") or "").strip()
            if not username:
                raise errors.InvalidInput(gettext("Name the person"))
            getattr(tasks, action)(db, ctx.runtime, task_id=task_id, username=username, actor=person)
        elif action == "pause":
            reason = (request.form.get("reason") or "").strip()
            if not reason:
                raise errors.InvalidInput(gettext("Say what the client is to do"))
            tasks.pause(db, ctx.runtime, task_id=task_id, actor=person, reason=reason)
        else:
            tasks.resume(db, ctx.runtime, task_id=task_id, actor=person)
    flash(gettext("Done"))
    if action in ("delegate", "assign"):
        return redirect(url_for("pages.inbox"))
    return redirect(url_for("pages.task", task_id=task_id))


@blp.post("/cases/<int:instance_id>/comments")
@login_required
def comment(instance_id: int) -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        worklist.add_comment(db, instance_id=instance_id, actor=actor(), body=request.form.get("body") or "",
                             now=ctx.runtime.now())
    return redirect(request.form.get("next") or url_for("pages.inbox"))


@blp.post("/clients/<string:client_id>/reveal")
@login_required
def reveal(client_id: str) -> Any:
    ctx = bpm()
    with ctx.db.transaction() as db:
        shown = client_access.reveal(db, client_id=client_id, field=request.form.get("field") or "",
                                     reason=request.form.get("reason") or "", actor=actor(),
                                     now=ctx.runtime.now())
    return render_template("_revealed.html", shown=shown)


# -- case page -------------------------------------------------------------------------------
@blp.get("/cases/<string:business_key>")
@login_required
def case(business_key: str) -> Any:
    ctx = bpm()
    person = actor()
    now = ctx.runtime.now()
    with ctx.db.transaction() as db:
        instance = worklist.readable_case(db, business_key=business_key, actor=person)
        where = activity.of(db, ctx.runtime, instance_id=instance.id, actor=person)
        data = instances.data_of(db, ctx.runtime, instance)
        screened = field_policy.screen_case(db, ctx.field_policy, actor=person, instance=instance, data=data)
        events = field_policy.screen_history(db, ctx.field_policy, actor=person, instance=instance, data=data,
                                             events=instances.history(db, instance.id, actor=person))
        comments = worklist.comments(db, instance_id=instance.id, actor=person)
        open_rows = worklist.rows_of(db, worklist.open_steps(db, instance=instance, actor=person), now=now)
        related = worklist.related_cases(db, instance=instance, data=data, actor=person)
        done = worklist.steps_done(db, instance=instance, events=events)
        data_rows = _data_rows(db, instance, screened)
        contact = _contact(db, instance, person)
    states = [{"element_id": e.element_id, "markers": e.markers, "count": e.count,
               "badge": (i18n.sla_phrase(e.sla_state, None if e.due_at is None else (e.due_at - now).total_seconds())
                         if e.sla_state not in (None, "none") else None),
               "badge_state": e.sla_state} for e in where.elements]
    names = {e.element_id: e.name for e in where.elements}
    return render_template("case.html", instance=instance, activity=where, case=screened, events=events,
                           names=names, done=done, data_rows=data_rows,
                           comments=comments, open_rows=open_rows, related=related, now=now, contact=contact,
                           states_json=json.dumps(states, ensure_ascii=False))


def _contact(db: Any, instance: Any, person: Any) -> dict[str, Any] | None:
    """A complaint's client contact owner (首办责任人) by name, and whom the reader may hand it
    to (nobody unless they supervise the contact); None for a case without one."""
    owner = (instance.facts or {}).get(handover.FIRST_CONTACT_OWNER)
    if not owner:
        return None
    names = dict(db.execute(select(User.username, User.display_name).where(User.username == owner)).all())
    return {"owner": owner, "owner_name": names.get(owner, owner),
            "candidates": handover.candidates(db, instance_id=instance.id, actor=person)}


@blp.post("/cases/<int:instance_id>/owner")
@login_required
def hand_over(instance_id: int) -> Any:
    """Hand the case's client contact to someone else (an absence), with a reason; the same
    service and refusals as ``POST /api/v1/instances/{id}/owner``."""
    ctx = bpm()
    try:
        with ctx.db.transaction() as db:
            done = handover.hand_over(db, ctx.runtime, instance_id=instance_id,
                                      username=request.form.get("username") or "",
                                      reason=request.form.get("reason") or "", actor=actor())
        flash(gettext("Client contact handed over to %(who)s", who=done.owner))
    except errors.NotFound:
        raise
    except errors.BpmError as exc:
        flash(mask_text(exc.message), "warning")
    return redirect(request.form.get("next") or url_for("pages.inbox"))


@blp.get("/cases/<string:business_key>/diagram.bpmn")
@login_required
def diagram(business_key: str) -> Response:
    ctx = bpm()
    with ctx.db.transaction() as db:
        instance = worklist.readable_case(db, business_key=business_key, actor=actor())
        xml = activity.bpmn_xml(db, instance_id=instance.id, actor=actor())
    return Response(xml, mimetype="application/xml")


# -- notifications ---------------------------------------------------------------------------
@blp.get("/notifications")
@login_required
def notifications() -> Any:
    ctx = bpm()
    unread_only = request.args.get("unread") == "1"
    with ctx.db.transaction() as db:
        rows, total = worklist.notifications(db, actor=actor(), unread_only=unread_only, limit=100)
    return render_template("notifications.html", rows=rows, total=total, unread_only=unread_only)


@blp.post("/notifications/read")
@login_required
def mark_read() -> Any:
    ctx = bpm()
    everything = request.form.get("all") == "1"
    ids = [int(v) for v in request.form.getlist("id") if v.isdigit()]
    if everything or ids:
        with ctx.db.transaction() as db:
            worklist.mark_read(db, actor=actor(), now=ctx.runtime.now(), ids=None if everything else ids)
    return redirect(url_for("pages.notifications"))


# The supervisors' board and figures, and the process owners' pages, live in modules of their
# own, on this blueprint.
board.install(blp)
figures_page.install(blp)
owners.install(blp)
owners_migration.install(blp)
admin_pages.install(blp)
draft_forms.install(blp)
draft_lint.install(blp)
