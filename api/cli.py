"""The ``bpm`` command: database, deployments, users, audit, serving and workers.

A thin adapter like the API: each command is one unit of work over the engine services.
Errors print one line and exit non-zero; nothing a user can type or deploy produces a
stack trace.
"""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import click

from engine import audit, errors
from engine.access import identity, signin
from engine.access.identity import Actor
from engine.access.signin import Throttle
from engine.bootstrap import build_runtime, rq_scheduler
from engine.bpmn import bundle
from engine.brokerage import demo, demo_cases, departures
from engine.calendars import SHANGHAI
from engine.config import AUDIT_ANCHOR_DIR, AUDIT_KEY, Settings
from engine.db import Database
from engine.errors import BpmError, ConfigError, DeploymentRejected
from engine.process import deployments
from engine.process.runtime import Runtime
from engine.sla import admin as sla_admin


class Context:
    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._db: Database | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = Settings.from_env()
        return self._settings

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.settings.database_url, audit_key=self.settings.audit_key)
        return self._db

    def runtime(self) -> Runtime:
        return build_runtime(self.settings)

    def close(self) -> None:
        """Close the pooled connections: psycopg warns about connections left to the GC."""
        if self._db is not None:
            self._db.dispose()
            self._db = None


pass_ctx = click.make_pass_decorator(Context, ensure=True)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group()
@click.pass_context
def main(click_ctx: click.Context) -> None:
    """证券客户服务流程引擎 - brokerage client-service BPM."""
    # One Context for the whole invocation, closed when the command ends (even on error).
    click_ctx.call_on_close(click_ctx.ensure_object(Context).close)


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(ctx: Context) -> None:
    """Create or migrate the schema to the latest revision."""
    from engine.schema import upgrade

    upgrade(ctx.settings.database_url)
    click.echo(f"database is at the latest revision ({_safe_url(ctx.settings.database_url)})")


def _safe_url(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--check", is_flag=True, help="Validate and lint only; store nothing.")
@pass_ctx
def deploy(ctx: Context, paths: tuple[Path, ...], check: bool) -> None:
    """Deploy bundles: directories, zips or .bpmn files (with forms/ beside them).

    With --check: exit 0 when the bundle would be accepted; otherwise exit 1 and print one
    line per problem, ``file:line element-id: message``.
    """
    missing = [p for p in paths if not p.exists()]
    if missing:
        fail(f"no such file or directory: {', '.join(map(str, missing))}")
    the_bundle = bundle.from_paths(list(paths))
    rt = ctx.runtime()
    if check:
        problems = _check(ctx, rt, the_bundle)
        for problem in problems:
            click.echo(problem.format())
        for warning in deployments.warnings(the_bundle):
            click.echo(warning.format(), err=True)
        if problems:
            sys.exit(1)
        click.echo(f"ok: {len(the_bundle.bpmn)} diagram(s), {len(the_bundle.forms)} form(s)")
        return
    try:
        with ctx.db.transaction() as session:
            results = deployments.deploy(session, rt, the_bundle, actor=identity.Actor.system("cli"))
    except DeploymentRejected as exc:
        _refused(exc)
    for result in results:
        state = "deployed" if result.created else "unchanged"
        click.echo(f"{state}: {result.version.process_key} v{result.version.version}")


@main.command()
@click.argument("process_key")
@click.argument("version", type=click.IntRange(1))
@click.option("--reason", required=True, help="Why the earlier version comes back (audited).")
@click.option("--as", "username", help="The process owner doing it, for the audit trail (default: cli).")
@pass_ctx
def redeploy(ctx: Context, process_key: str, version: int, reason: str, username: str | None) -> None:
    """Roll back: deploy VERSION of PROCESS_KEY again as its next version.

    The same lint and audit as any deploy; new cases start on it, running cases stay on
    their versions. Exit 1 with one line per problem when today's lint refuses the version."""
    rt = ctx.runtime()
    try:
        with ctx.db.transaction() as session:
            actor = identity.Actor.system("cli")
            if username:
                actor = identity.actor_for(session, identity.get_user(session, username))
            result = deployments.redeploy(session, rt, process_key, version, actor=actor, reason=reason)
            number, created = result.version.version, result.created
    except DeploymentRejected as exc:
        _refused(exc)
    if created:
        click.echo(f"deployed: {process_key} v{number} (version {version} again)")
    else:
        click.echo(f"unchanged: {process_key} v{number} already has version {version}'s content")


def _refused(exc: DeploymentRejected) -> NoReturn:
    """A refused deploy: one ``file:line element-id: message`` line per problem, exit 1."""
    for problem in exc.problems:
        click.echo(problem.format())
    sys.exit(1)


def _check(ctx: Context, rt: Runtime, the_bundle: bundle.Bundle) -> list[Any]:
    """Lint with the database when there is one (do the candidate groups exist?)."""
    try:
        with ctx.db.transaction() as session:
            identity.group_keys(session)
            return deployments.check(session, rt, the_bundle)[1]
    except (BpmError, OSError) as exc:
        raise exc
    except Exception:  # noqa: BLE001 - no database yet: lint what needs none
        click.echo("note: no database reachable; candidate groups were not checked", err=True)
        return deployments.check(None, rt, the_bundle)[1]


@main.command()
@click.argument("process_key")
@click.option("--to", "to_version", type=int, required=True, help="The version to move the cases to.")
@click.option("--from-version", type=int, help="Only cases on this version (default: every other version).")
@click.option("--case", "instance_ids", type=int, multiple=True, help="Exactly this case (instance id); repeat.")
@click.option("--branch", help="Only cases of this branch.")
@click.option("--waiting-at", help="Only cases with an open task at this step (element id).")
@click.option("--dry-run", is_flag=True, help="Report per case whether it can move and what changes; store nothing.")
@click.option("--batch-size", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--as", "username", help="The process owner doing it, for the audit trail (default: cli).")
@pass_ctx
def migrate(ctx: Context, process_key: str, to_version: int, from_version: int | None, instance_ids: tuple[int, ...],
            branch: str | None, waiting_at: str | None, dry_run: bool, batch_size: int, username: str | None) -> None:
    """Move running cases of PROCESS_KEY to another version (each case in its own transaction).

    Prints one line per case: moved, can move (dry run) or refused with the reason. Exits 1
    when any case could not move (it stays on its version)."""
    from api import migrations
    from engine.process import migration

    rt = ctx.runtime()
    actor = identity.Actor.system("cli")
    if username:
        with ctx.db.transaction() as session:
            actor = identity.actor_for(session, identity.get_user(session, username))
    selection = migration.Selection(from_version=from_version, instance_ids=instance_ids, branch_code=branch,
                                    waiting_at=waiting_at)
    report = migrations.run(ctx.db, rt, actor, process_key, to_version, selection, dry_run=dry_run,
                            batch_size=batch_size, limit=1_000_000 if not instance_ids else migration.MAX_CASES)
    for outcome in report.outcomes:
        state = "moved" if outcome.moved else ("can move" if outcome.can_move else "refused")
        label = outcome.business_key or f"#{outcome.instance_id}"
        detail = "; ".join(r.words.en for r in outcome.reasons) if outcome.reasons \
            else "; ".join(w.en for w in outcome.changes)
        click.echo(f"{label} v{outcome.from_version or '?'} -> v{outcome.to_version}: {state}: {detail}")
    verb = "can move" if dry_run else "moved"
    click.echo(f"{len(report.outcomes)} case(s) in {report.batches} batch(es): "
               f"{report.movable if dry_run else report.moved} {verb}, {report.refused} refused")
    if report.refused:
        sys.exit(1)


@main.group()
def user() -> None:
    """Users and their groups."""


class Lifetime(click.ParamType):
    """A token's lifetime: ``90d`` (days) or ``12h`` (hours)."""

    name = "lifetime"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> timedelta:
        if isinstance(value, timedelta):
            return value
        text = str(value).strip().lower()
        unit = {"d": "days", "h": "hours"}.get(text[-1:])
        if unit is None or not text[:-1].isdigit():
            self.fail(f"{value!r} is not a lifetime: write days or hours, e.g. 90d or 12h", param, ctx)
        lifetime = timedelta(**{unit: int(text[:-1])})
        if not timedelta(0) < lifetime <= identity.MAX_TOKEN_TTL:
            self.fail(f"{value!r}: a token's lifetime must be more than 0 and at most "
                      f"{identity.MAX_TOKEN_TTL.days} days", param, ctx)
        return lifetime


EXPIRES_HELP = (f"How long the token works: days or hours, e.g. 30d or 12h (default "
                f"{identity.API_TOKEN_TTL.days}d, at most {identity.MAX_TOKEN_TTL.days}d).")


@user.command("create")
@click.argument("username")
@click.option("--name", "display_name", help="Display name (defaults to the username).")
@click.option("--password", help="Password for the login endpoint (optional).")
@click.option("--branch", help="Branch code, e.g. HZ01.")
@click.option("--group", "groups", multiple=True, help="Group or role key; repeat for several.")
@click.option("--token", "with_token", is_flag=True, help="Also issue and print an API token.")
@click.option("--expires", type=Lifetime(), default=f"{identity.API_TOKEN_TTL.days}d", help=EXPIRES_HELP)
@pass_ctx
def user_create(ctx: Context, username: str, display_name: str | None, password: str | None,
                branch: str | None, groups: tuple[str, ...], with_token: bool, expires: timedelta) -> None:
    """Create a user (groups are created when missing)."""
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        identity.create_user(session, username=username, display_name=display_name or username,
                             now=rt.now(), password=password, branch_code=branch, groups=list(groups),
                             actor="cli")
        token = identity.issue_token(session, username=username, now=rt.now(), ttl=expires) if with_token else None
    click.echo(f"created user {username}")
    if token:
        click.echo(f"token: {token}")
        click.echo(f"expires: {_shanghai(rt.now() + expires)}")


@main.group()
def group() -> None:
    """Candidate groups and roles."""


@group.command("create")
@click.argument("key")
@click.option("--name", help="Display name, e.g. 柜员 (a lane may be named after it).")
@click.option("--kind", default="role", show_default=True,
              type=click.Choice(["role", "branch_role", "service_group"]))
@pass_ctx
def group_create(ctx: Context, key: str, name: str | None, kind: str) -> None:
    """Create a group (no-op when it exists)."""
    with ctx.db.transaction() as session:
        identity.ensure_group(session, key=key, name=name, kind=kind)
    click.echo(f"group {key} exists")


@group.command("add")
@click.argument("key")
@click.argument("usernames", nargs=-1, required=True)
@pass_ctx
def group_add(ctx: Context, key: str, usernames: tuple[str, ...]) -> None:
    """Add users to a group."""
    with ctx.db.transaction() as session:
        for username in usernames:
            identity.add_member(session, group_key=key, username=username)
    click.echo(f"added {len(usernames)} user(s) to {key}")


@user.command("token")
@click.argument("username")
@click.option("--expires", type=Lifetime(), default=f"{identity.API_TOKEN_TTL.days}d", help=EXPIRES_HELP)
@pass_ctx
def user_token(ctx: Context, username: str, expires: timedelta) -> None:
    """Issue a new API token for a user (shown once, on standard output; when it expires on
    standard error)."""
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        token = identity.issue_token(session, username=username, now=rt.now(), ttl=expires)
    click.echo(token)
    click.echo(f"expires: {_shanghai(rt.now() + expires)}", err=True)


@user.command("revoke")
@click.argument("username")
@pass_ctx
def user_revoke(ctx: Context, username: str) -> None:
    """Revoke every token of a user: they stop working at once (audited)."""
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        revoked = identity.revoke_tokens(session, username=username, actor=Actor.system("cli"), now=rt.now())
    click.echo(f"revoked {revoked} token(s) of {username}")


@user.command("unlock")
@click.argument("username")
@pass_ctx
def user_unlock(ctx: Context, username: str) -> None:
    """Lift a username's sign-in lockout and backoff (audited). Needs BPM_REDIS_URL: without
    it the counts live in the memory of `bpm serve`, and only its API can unlock."""
    throttle = Throttle.from_settings(ctx.settings)
    if not throttle.shared:
        fail("without BPM_REDIS_URL the sign-in counts live in the memory of `bpm serve`: unlock through its "
             "API (POST /api/v1/auth/unlock as an administrator), or restart it")
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        was_locked = signin.unlock(session, throttle, username=username, actor=Actor.system("cli"), now=rt.now())
    click.echo(f"{username} unlocked" if was_locked else f"{username} was not locked; its failed attempts are cleared")


def _shanghai(moment: datetime) -> str:
    return f"{moment.astimezone(SHANGHAI):%Y-%m-%d %H:%M} (Asia/Shanghai)"


@main.group("audit")
def audit_group() -> None:
    """The audit trail."""


@audit_group.command("verify")
@pass_ctx
def audit_verify(ctx: Context) -> None:
    """Recompute every hash chain with the audit key and check it against the anchors in
    BPM_AUDIT_ANCHOR_DIR; exit 1 and name the first broken link of each stream."""
    settings = ctx.settings
    if settings.audit_key is None and not settings.is_sqlite:
        fail(f"{AUDIT_KEY} is not set: a PostgreSQL database's audit trail is keyed and verified with it")
    with ctx.db.transaction() as session:
        report = audit.verify(session, anchors=settings.audit_anchor_dir)
    for link in report.broken:
        click.echo(f"BROKEN {link.format()}")
    for problem in report.anchor_problems:
        click.echo(f"BROKEN anchor {problem}")
    if not report.keyed:
        click.echo(f"unkeyed: {AUDIT_KEY} is not set, so the chains are plain SHA-256 and whoever can write "
                   "the database can rewrite them undetected")
    elif settings.audit_anchor_dir is None:
        click.echo(f"no anchors ({AUDIT_ANCHOR_DIR} is not set): events removed from the end of a stream "
                   "together with its head are not detected")
    elif report.anchors:
        newest = report.anchors[-1]
        click.echo(f"{len(report.anchors)} anchor(s), the newest {newest.number} of "
                   f"{newest.written_at.isoformat()} ({newest.file})")
    else:
        click.echo(f"no anchor in {settings.audit_anchor_dir} yet: run bpm audit anchor")
    if report.plain_events:
        click.echo(f"{report.plain_events} event(s) written before the audit key, pinned by later events or anchors")
    problems = f", {len(report.anchor_problems)} anchor problem(s)" if report.anchor_problems else ""
    click.echo(f"{report.events} events in {report.streams} streams; {len(report.broken)} broken chain(s){problems}")
    if not report.ok:
        sys.exit(1)


@audit_group.command("anchor")
@pass_ctx
def audit_anchor(ctx: Context) -> None:
    """Write a signed checkpoint of every stream head that moved since the last one into
    BPM_AUDIT_ANCHOR_DIR (outside the database); run it often, e.g. every 10 minutes from cron.
    Exit 1 when a stream's new events do not verify (they are not anchored)."""
    settings = ctx.settings
    if settings.audit_anchor_dir is None:
        fail(f"{AUDIT_ANCHOR_DIR} is not set: the directory outside the database the anchors are written to")
    with ctx.db.transaction() as session:
        report = audit.anchor(session, settings.audit_anchor_dir, now=ctx.runtime().now())
    for link in report.broken:
        click.echo(f"BROKEN {link.format()}")
    if report.file is None:
        click.echo(f"no stream moved since anchor {report.number}: nothing written")
    else:
        click.echo(f"anchor {report.number}: {report.streams} stream head(s) pinned in {report.file}")
    if report.broken:
        sys.exit(1)


@main.group()
def calendar() -> None:
    """The working-day / trading-day calendar."""


@calendar.command("set-day")
@click.argument("day", type=click.DateTime(formats=["%Y-%m-%d"]))
@click.option("--holiday", "holiday", help="Make it a holiday with this name (not a working day).")
@click.option("--workday", "workday", help="Make it a working day (e.g. a 调休 make-up day) with this name.")
@click.option("--trading/--no-trading", default=None,
              help="Override the trading flag (default: working and Monday-Friday).")
@pass_ctx
def calendar_set_day(ctx: Context, day: Any, holiday: str | None, workday: str | None, trading: bool | None) -> None:
    """Add or correct one day, then recompute the due dates of open tasks and the schedules'
    next runs."""
    from engine.timers import schedules

    if (holiday is None) == (workday is None):
        fail("give exactly one of --holiday NAME or --workday NAME", code=2)
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        sla_admin.set_day(session, day=day.date(), working=workday is not None, trading=trading,
                    name=holiday or workday, actor=identity.Actor.system("cli"), now=rt.now())
        count = sla_admin.recompute(session, rt, now=rt.now())
        moved = schedules.recompute(session, rt, now=rt.now())
    click.echo(f"{day.date()} saved; {count} open task(s) got a new due date; {moved} schedule(s) moved")


@calendar.command("coverage")
@pass_ctx
def calendar_coverage(ctx: Context) -> None:
    """What the calendar knows, and open tasks whose due date needed more."""

    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        cover = sla_admin.coverage(session, now=rt.now())
    click.echo(f"known: {cover.first} .. {cover.last}; open tasks flagged calendar_incomplete: "
               f"{cover.incomplete_open_tasks}; years imported whole: "
               f"{', '.join(map(str, cover.complete_years)) or 'none'}")
    if cover.warning:
        click.echo(f"warning: {cover.warning}", err=True)


@calendar.command("import-year")
@click.argument("year", type=int)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--incomplete", is_flag=True, help="Not the year's official notice yet (keep warning about it).")
@pass_ctx
def calendar_import_year(ctx: Context, year: int, file: str, incomplete: bool) -> None:
    """Import a year from its official notice: a CSV of rows date,kind,name (kind holiday or
    workday, e.g. 2027-02-06,holiday,春节); every day not listed is ordinary. Then recompute the
    due dates of open tasks and the schedules' next runs."""
    from engine.timers import schedules

    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:
            text = handle.read(sla_admin.MAX_YEAR_TABLE_CHARS + 1)
    except UnicodeDecodeError:
        fail(f"{file}: not UTF-8 text", code=2)
    rt = ctx.runtime()
    try:
        rows = sla_admin.parse_year_table(text)
        with ctx.db.transaction() as session:
            done = sla_admin.import_year_table(session, year=year, rows=rows, complete=not incomplete,
                                               actor=identity.Actor.system("cli"), now=rt.now())
            count = sla_admin.recompute(session, rt, now=rt.now())
            moved = schedules.recompute(session, rt, now=rt.now())
    except errors.DataInvalid as exc:
        fail("\n  ".join([exc.message, *(f"{file}:{e.field.removeprefix('line ')}: {e.message}"
                                          for e in exc.errors)]), code=2)
    except errors.InvalidInput as exc:
        fail(f"{file}: {exc.message}", code=2)
    click.echo(f"{year}: {done.holidays} holiday(s), {done.workdays} make-up working day(s), {done.days} days written"
               f"{'' if done.complete else ' (not marked complete)'}; {count} open task(s) got a new due date; "
               f"{moved} schedule(s) moved")


@main.group()
def sla() -> None:
    """SLA policies (data, not diagram edits)."""


@sla.command("load")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def sla_load(ctx: Context, path: Path) -> None:
    """Create or update the policies in a JSON file (a list of policies with a "key")."""
    import json

    from marshmallow import ValidationError
    from sqlalchemy import select

    from api.schemas import PolicySchema
    from engine.models import ACTIVE_TASK_STATES, Task

    try:
        policies = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        fail(f"{path}:{exc.lineno}: not JSON: {exc.msg}")
    if not isinstance(policies, list) or not all(isinstance(p, dict) for p in policies):
        fail(f"{path}: expected a JSON list of policies (objects with a \"key\")")
    loaded = []
    for number, policy in enumerate(policies, 1):
        key = policy.get("key")
        if not isinstance(key, str) or not key:
            fail(f"{path}: policy #{number} has no \"key\"")
        try:  # the same rules as PUT /api/v1/sla/policies/<key>
            loaded.append({**PolicySchema().load({k: v for k, v in policy.items() if k != "key"}), "key": key})
        except ValidationError as exc:
            fail(f"{path}: policy {key!r}: {json.dumps(exc.messages, ensure_ascii=False)}")

    def due_dates(session: Any) -> dict[int, tuple[Any, Any]]:
        rows = session.execute(select(Task.id, Task.sla_policy_id, Task.due_at)
                               .where(Task.status.in_(ACTIVE_TASK_STATES)))
        return {row.id: (row.sla_policy_id, row.due_at) for row in rows}

    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        before = due_dates(session)
        for policy in loaded:
            sla_admin.upsert_policy(session, rt, data=policy, actor=identity.Actor.system("cli"))
        # Each save recomputes every open task: count the tasks the whole file changed.
        changed = sum(1 for task_id, due in due_dates(session).items() if before.get(task_id) != due)
    click.echo(f"{len(policies)} polic{'y' if len(policies) == 1 else 'ies'} saved; "
               f"{changed} open task(s) recomputed")


@main.group()
def timer() -> None:
    """Waiting timers."""


@timer.command("reschedule")
@click.argument("timer_id", type=int)
@click.argument("due_at")
@pass_ctx
def timer_reschedule(ctx: Context, timer_id: int, due_at: str) -> None:
    """Move a waiting timer to DUE_AT (ISO 8601 with an offset, e.g. 2026-12-01T09:00:00+08:00)."""
    from datetime import datetime

    from engine.timers import firing

    try:
        when = datetime.fromisoformat(due_at)
    except ValueError:
        fail(f"{due_at!r} is not an ISO 8601 date-time", code=2)
    if when.tzinfo is None:
        fail("give the time with an offset, e.g. +08:00", code=2)
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        firing.reschedule(session, rt, timer_id=timer_id, due_at=when, actor=identity.Actor.system("cli"))
    click.echo(f"timer {timer_id} now due {when.isoformat()}")


@main.group("registry")
def registry_group() -> None:
    """The client registry: branches, staff, service groups, clients; classification."""


@registry_group.command("import")
@click.option("--branches", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="branches CSV")
@click.option("--staff", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="staff CSV")
@click.option("--groups", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="service groups CSV")
@click.option("--clients", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="clients CSV")
@pass_ctx
def registry_import_cmd(ctx: Context, branches: Path | None, staff: Path | None, groups: Path | None,
                        clients: Path | None) -> None:
    """Create or update rows from CSV files (applied branches, staff, groups, clients).

    Valid rows are applied; each rejected row is printed as ``file:line column: reason``
    and the exit code is 1. Importing the same files again changes nothing."""
    from engine.brokerage import registry_import

    paths = {"branches": branches, "staff": staff, "groups": groups, "clients": clients}
    files = {kind: (str(path), path.read_bytes()) for kind, path in paths.items() if path is not None}
    if not files:
        fail("give at least one of --branches, --staff, --groups, --clients", code=2)
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        report = registry_import.import_files(session, files=files, actor=identity.Actor.system("cli"), now=rt.now())
    for file_report in report.files:
        click.echo(file_report.summary())
        for error in file_report.rejected:
            click.echo(f"  {error.format(file_report.source)}")
    if report.rejected:
        sys.exit(1)


@registry_group.command("evaluate")
@click.option("--as-of", "as_of", type=click.DateTime(formats=["%Y-%m-%d"]),
              help="Evaluation date (default: today in Asia/Shanghai).")
@pass_ctx
def registry_evaluate(ctx: Context, as_of: Any) -> None:
    """Classify every client and record the evaluated VIP tiers and downgrade grace as of a
    date (the client's VIP case changes the effective tier); print the changes, one a line."""
    from engine.brokerage import classification
    from engine.calendars import SHANGHAI

    rt = ctx.runtime()
    day = as_of.date() if as_of is not None else rt.now().astimezone(SHANGHAI).date()
    with ctx.db.transaction() as session:
        result = classification.evaluate(session, as_of=day, actor=identity.Actor.system("cli"), now=rt.now())
    for change in result.changes:
        grace = f" (grace until {change.grace_until})" if change.grace_until else ""
        click.echo(f"{change.client_id} {change.kind}: {change.before or '-'} -> {change.after or '-'}"
                   f"{grace} [{change.rules}]")
    skipped = f"; {result.skipped} skipped (already evaluated after {day})" if result.skipped else ""
    click.echo(f"{result.evaluated} client(s) evaluated as of {day}: {len(result.changes)} change(s){skipped}")


@registry_group.command("staff-departed")
@click.argument("username")
@click.option("--on", "departed_on", required=True, type=click.DateTime(formats=["%Y-%m-%d"]),
              help="The departure date (today or earlier).")
@pass_ctx
def registry_staff_departed(ctx: Context, username: str, departed_on: Any) -> None:
    """员工离职: deactivate USERNAME, end their service-group membership and start a
    departed_staff callback for each client of the group; print the callbacks and any
    group that now needs a replacement."""

    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        result = departures.staff_departed(session, rt, username=username, departed_on=departed_on.date(),
                                         actor=identity.Actor.system("cli"), now=rt.now())
        callbacks = [(c.business_key, c.client_id, c.status) for c in result.callbacks]
    for business_key, client_id, status in callbacks:
        click.echo(f"{business_key} departed_staff callback for {client_id} ({status})")
    for shortfall in result.groups_needing_replacement:
        click.echo(f"warning: {shortfall.message} (members: {', '.join(shortfall.members) or 'none'})")
    released = f"; {result.released_tasks} claimed task(s) returned to their queues" if result.released_tasks else ""
    click.echo(f"{username} departed on {result.departed_on}: deactivated, left "
               f"{result.service_group or 'no service group'}; {len(callbacks)} callback(s) started{released}")


@main.group("figures")
def figures_group() -> None:
    """Inputs of the supervisors' figures: client period figures, settings."""


@figures_group.command("import-snapshot")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_ctx
def figures_import_snapshot(ctx: Context, path: Path) -> None:
    """Load per-period client figures (assets at start and end, net inflow, traded amount,
    referrals) from a CSV file. Rejected rows are printed as ``file:line column: reason``
    and the exit code is 1; importing the same file again changes nothing."""
    from engine.brokerage import snapshots

    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        report = snapshots.import_csv(session, data=path.read_bytes(), actor=identity.Actor.system("cli"),
                                      now=rt.now(), source=str(path))
    click.echo(report.summary())
    for error in report.rejected:
        click.echo(f"  {error.format(report.source)}")
    if report.rejected:
        sys.exit(1)


@figures_group.command("count-board")
@pass_ctx
def figures_count_board(ctx: Context) -> None:
    """Count the supervisors' board for the whole firm now (a snapshot the board pages read
    for the next few minutes); the app and the timer workers count one every minute."""
    from engine.brokerage import board_snapshot

    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        snapshot = board_snapshot.build(session, now=rt.now())
    click.echo(f"board counted as of {snapshot.as_of.isoformat()} in {snapshot.took_ms} ms")


@figures_group.command("set")
@click.argument("key")
@click.argument("value")
@click.pass_context
def figures_set(click_ctx: click.Context, key: str, value: str) -> None:
    """The same as ``bpm settings set`` (kept for the scripts that call it here)."""
    click_ctx.invoke(settings_set, key=key, value=value)


@main.group("settings")
def settings_group() -> None:
    """The tunables of the processes and figures (engine/brokerage/settings.py)."""


@settings_group.command("list")
@click.option("--markdown", is_flag=True, help="Print the registry as docs/settings.md.")
@pass_ctx
def settings_list(ctx: Context, markdown: bool) -> None:
    """Every tunable: key, default, stored value, how it applies, and what it means."""
    from engine.brokerage import settings

    if markdown:
        click.echo(settings.markdown(), nl=False)
        return
    with ctx.db.transaction() as session:
        stored = settings.stored_values(session)
    for tunable in settings.TUNABLES.values():
        how = ", ".join(part for part in (f"case: {tunable.variable}" if tunable.variable else "",
                                          "stored" if tunable.stored else "") if part)
        value = f"{stored[tunable.key]} (default {tunable.default})" if tunable.key in stored else tunable.default
        click.echo(f"{tunable.key} = {value}  [{how}; {tunable.source}]\n    {tunable.meaning}")
    for key in sorted(k for k in stored if k not in settings.TUNABLES):
        click.echo(f"{key} = {stored[key]}  [stored; input]")


@settings_group.command("set")
@click.argument("key")
@click.argument("value")
@pass_ctx
def settings_set(ctx: Context, key: str, value: str) -> None:
    """Override a stored tunable firm-wide (e.g. ``complaint.sla.resolve.general "15 WD"``,
    ``callback.periodic.quarterly_ratio 0.03``), or give the prior year-end active clients
    (``callback.periodic.active_clients.2025[.HZ01] 12000``). Checked and audited."""
    from engine.brokerage import settings

    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        settings.set_value(session, key=key, value=value, actor=identity.Actor.system("cli"), now=rt.now())
    click.echo(f"{key} = {value.strip()}")


@main.group("demo")
def demo_group() -> None:
    """Demo data."""


@demo_group.command("load")
@pass_ctx
def demo_load(ctx: Context) -> None:
    """Create the demo branches, staff (password: demo), service groups and clients, deploy
    workflows/, and open the nine demo cases with dates relative to today. Idempotent."""
    rt = ctx.runtime()
    with ctx.db.transaction() as session:
        created = demo.load(session, rt)
    click.echo(f"demo users: {created} created (password '{demo.PASSWORD}'); branches, service groups and "
               f"clients loaded from {demo.DEMO_DATA}")
    try:
        with ctx.db.transaction() as session:
            results, policies = demo.load_workflows(session, rt, ctx.settings.workflows_dir)
    except DeploymentRejected as exc:
        for problem in exc.problems:
            click.echo(problem.format())
        sys.exit(1)
    for result in results:
        click.echo(f"{'deployed' if result.created else 'unchanged'}: "
                   f"{result.version.process_key} v{result.version.version}")
    click.echo(f"SLA policies saved: {policies}")
    try:
        with ctx.db.transaction() as session:
            cases = demo_cases.load_cases(session, rt, now=rt.now())
    except BpmError as exc:
        fail(f"the demo cases could not be loaded: {exc}")
    failed = []
    for case in cases:
        if case.error is not None:
            failed.append(case)
            click.echo(f"not loaded: {case.spec.key} ({case.spec.process_key}): {case.error}", err=True)
            continue
        click.echo(f"{'created' if case.created else 'exists'}: {case.key} ({case.spec.process_key}): "
                   f"{'; '.join(case.lines)}")
    if failed:
        fail(f"{len(failed)} of the {len(cases)} demo cases could not be loaded")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@pass_ctx
def serve(ctx: Context, host: str, port: int) -> None:
    """Serve the API and pages with Flask's server (the embedded default).

    In production run gunicorn: ``gunicorn 'api.wsgi:app'``."""
    from api import create_app
    from engine.brokerage.board_snapshot import Refresher
    from engine.timers.firing import EmbeddedRunner
    from engine.timers.notify import Notifier
    rt = build_runtime(ctx.settings, scheduler=rq_scheduler(ctx.settings))
    runner = None
    if rt.scheduler is not None:  # `bpm worker` fires them
        timers_note = "timers: rq workers (run `bpm worker`)"
    else:
        runner = EmbeddedRunner(ctx.db, rt, notifier=Notifier.from_settings(rt))
        rt.scheduler = runner
        runner.start()
        timers_note = "timers: embedded runner"
    # The supervisors' board is counted once a minute in the background (rq workers count it
    # too; a round another process counted recently is skipped).
    board = Refresher(ctx.db, rt.now)
    board.start()
    app = create_app(ctx.settings, database=ctx.db, runtime=rt, record_policy=True)
    click.echo(f"Brokerage BPM is running at http://{host}:{port}/  "
               f"(API: http://{host}:{port}/api/v1/openapi.json; demo login s104 / demo; {timers_note})")
    try:
        app.run(host=host, port=port, debug=False, use_reloader=False)
    finally:
        board.stop()
        if runner is not None:
            runner.stop()


@main.command()
@click.option("--sweep-interval", default=0.5, show_default=True, type=float,
              help="Seconds between sweeps that re-enqueue due, unfired timers.")
@click.option("--stale-after", default=30.0, show_default=True, type=float,
              help="Seconds after which a timer whose job is still 'started' is delivered again "
                   "(its worker died).")
@click.option("--burst", is_flag=True, help="Exit when the queue is empty (for tests).")
@pass_ctx
def worker(ctx: Context, sweep_interval: float, stale_after: float, burst: bool) -> None:
    """Run an rq worker that fires timers (needs BPM_REDIS_URL).

    Runs rq's scheduler (enqueue_at) in the same process, plus a sweep thread: the database
    is the source of truth, so a flushed Redis or a killed worker loses no timer."""
    from api import worker as rq_worker

    settings = ctx.settings
    if not settings.redis_url:
        fail("bpm worker needs BPM_REDIS_URL (without it, `bpm serve` runs timers itself)")
    settings.require_secret_key("bpm worker")
    settings.require_audit_key()

    def report(exc: Exception, backoff: float) -> None:
        click.echo(f"sweep failed ({type(exc).__name__}: {exc}); retrying in {backoff:.0f}s", err=True)

    rq_worker.run(settings, ctx.db, sweep_interval=sweep_interval, stale_after=stale_after, burst=burst,
                  on_sweep_error=report)


def run() -> None:
    try:
        main(standalone_mode=True)
    except ConfigError as exc:
        fail(exc.message)
    except BpmError as exc:
        fail(f"{exc.code}: {exc.message}")


if __name__ == "__main__":
    run()
