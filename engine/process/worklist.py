"""What a person's worklist keeps besides the tasks: comments on cases, half-filled forms,
named inbox views, their reminders and escalations, and the language they read the pages in.

Every function is scoped by who asks, like the task and instance services: a comment is
read and written only on a case the reader may see; a draft belongs to one person and one
task they may see; saved views and the language are the person's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from engine.access.identity import Actor
from engine.access.masking import mask_text
from engine.audit import record_instance_event
from engine.db import rowcount
from engine.errors import InstanceNotFound, InvalidInput, NotFound, NotificationNotFound
from engine.models import (
    ACTIVE_TASK_STATES,
    Client,
    Comment,
    Group,
    InstanceStatus,
    Notification,
    ProcessInstance,
    ProcessVersion,
    SavedView,
    Task,
    TaskDraft,
    TaskStatus,
    User,
)
from engine.process import instances, tasks
from engine.sla import clock as sla_clock

MAX_COMMENT = 4000
MAX_VIEW_NAME = 64
MAX_VIEW_QUERY = 1024
LOCALES = ("zh_CN", "en")


# -- the inbox's rows -------------------------------------------------------------------------
@dataclass
class TaskRow:
    """A task as a worklist row shows it: the process's name, the client (name masked, class
    and tier), and where its clock stands."""

    task: Task
    process_name: str
    client_name: str | None
    client_class: str | None
    vip_tier: str | None
    sla_state: str
    seconds_to_breach: float | None
    # Who it waits for: the assignee by name, or its candidate groups by their display names.
    waiting_for: str = ""


def mask_name(name: str | None) -> str | None:
    """王秀兰 → 王*兰, 王敏 → 王*: enough to tell clients apart on a list, not to identify one."""
    if not name:
        return name
    if len(name) <= 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def _person(username: str, names: Mapping[str, str | None]) -> str:
    """高晨 (s003): the name people know, and the username that tells two 高晨 apart."""
    name = names.get(username)
    return f"{name} ({username})" if name else username


def rows_of(session: Session, found: list[Task], *, now: datetime) -> list[TaskRow]:
    """The rows of tasks the caller was allowed to list (this adds no access of its own)."""
    client_ids = sorted({t.client_id for t in found if t.client_id})
    clients = {c.client_id: c for c in session.execute(
        select(Client).where(Client.client_id.in_(client_ids))).scalars()} if client_ids else {}
    keys = sorted({t.process_key for t in found})
    names: dict[str, str] = {}
    if keys:
        for key, name in session.execute(select(ProcessVersion.process_key, ProcessVersion.name)
                                         .where(ProcessVersion.process_key.in_(keys))
                                         .order_by(ProcessVersion.version)).all():
            names[key] = name or key
    group_keys = sorted({g for t in found if not t.assignee for g in (t.candidate_groups or [])})
    group_names = dict(session.execute(select(Group.key, Group.name).where(Group.key.in_(group_keys))).all()) \
        if group_keys else {}
    assignees = sorted({t.assignee for t in found if t.assignee})
    people = dict(session.execute(select(User.username, User.display_name).where(User.username.in_(assignees))).all()) \
        if assignees else {}
    rows = []
    for task in found:
        client = clients.get(task.client_id or "")
        state, seconds = sla_clock.state(task, now) if task.status in ACTIVE_TASK_STATES else ("none", None)
        rows.append(TaskRow(task=task, process_name=names.get(task.process_key, task.process_key),
                            client_name=mask_name(client.name) if client else None,
                            client_class=client.classification if client else None,
                            vip_tier=client.vip_tier if client else None,
                            sla_state=state, seconds_to_breach=seconds,
                            waiting_for=(_person(task.assignee, people) if task.assignee else
                                         "、".join(group_names.get(g, g) for g in task.candidate_groups or []))))
    return rows


# How far back a step done makes its case watched. Every page counts the watched steps, and
# a person's whole history is thousands of steps (16,667 in five years for an account manager
# at a national brokerage's size, docs/scale.md); a case still running half a year after their
# step left their hands long ago.
WATCH_DAYS = 180


def watched(session: Session, *, actor: Actor, now: datetime, limit: int = 50, offset: int = 0,
            days: int = WATCH_DAYS) -> tuple[list[Task], int]:
    """已关注: the open steps of running cases this person did a step of in the last ``days``
    days (taking part is what lets them read the case), other than their own, and none they
    are recused from."""
    mine = select(Task.instance_id).where(Task.completed_by == actor.username,
                                          Task.completed_at >= now - timedelta(days=days))
    query = (select(Task).join(ProcessInstance, ProcessInstance.id == Task.instance_id)
             .where(Task.instance_id.in_(mine), Task.status.in_(ACTIVE_TASK_STATES),
                    ProcessInstance.status == InstanceStatus.RUNNING,
                    or_(Task.assignee.is_(None), Task.assignee != actor.username)))
    found = [t for t in session.execute(query.order_by(Task.due_at.is_(None), Task.due_at, Task.id)).scalars()
             if not tasks.is_excluded(t, actor)]
    return found[offset:offset + limit], len(found)


def done(session: Session, *, actor: Actor, now: datetime, days: int = 30, limit: int = 50,
         offset: int = 0) -> tuple[list[Task], int]:
    """已办: the steps this person completed in the last ``days`` days, newest first."""
    where = [Task.completed_by == actor.username, Task.status == TaskStatus.COMPLETED,
             Task.completed_at >= now - timedelta(days=days)]
    total = session.execute(select(func.count()).select_from(Task).where(*where)).scalar_one()
    found = session.execute(select(Task).where(*where).order_by(Task.completed_at.desc(), Task.id.desc())
                            .limit(limit).offset(offset)).scalars().all()
    return list(found), int(total)


# -- comments ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CommentView:
    id: int
    author: str
    body: str  # identifiers in it masked, like everything else a case shows
    created_at: datetime


def comments(session: Session, *, instance_id: int, actor: Actor) -> list[CommentView]:
    """The case's comments, oldest first (404 for a case the reader may not see)."""
    instances.get(session, instance_id, actor=actor)
    return [view_of(c) for c in session.execute(select(Comment).where(Comment.instance_id == instance_id)
                                               .order_by(Comment.id)).scalars()]


def view_of(comment: Comment) -> CommentView:
    """A comment as readers see it: identifiers in its text masked."""
    return CommentView(comment.id, comment.author, mask_text(comment.body), comment.created_at)


def add_comment(session: Session, *, instance_id: int, actor: Actor, body: str, now: datetime) -> Comment:
    """A comment on a case the author may see; audited on the case."""
    text = (body or "").strip()
    if not text:
        raise InvalidInput("a comment needs some text", field="body")
    if len(text) > MAX_COMMENT:
        raise InvalidInput(f"a comment is at most {MAX_COMMENT} characters", field="body")
    instance = instances.get(session, instance_id, actor=actor)
    comment = Comment(instance_id=instance.id, author=actor.username, body=text, created_at=now)
    session.add(comment)
    session.flush()
    record_instance_event(session, instance, kind="comment.added", actor=actor.username, at=now,
                          data={"comment_id": comment.id, "body": text})
    return comment


# -- drafts --------------------------------------------------------------------------------
def draft(session: Session, *, task_id: int, actor: Actor) -> dict[str, Any] | None:
    """What this person last saved of the task's form, if anything."""
    tasks.get(session, task_id, actor=actor)
    row = session.get(TaskDraft, (task_id, actor.username))
    return None if row is None else dict(row.data)


def save_draft(session: Session, *, task_id: int, actor: Actor, data: dict[str, Any], now: datetime) -> None:
    """Keep a half-filled form for this person (not validated: it is not finished)."""
    task = tasks.get(session, task_id, actor=actor)
    if task.status not in ("open", "claimed"):
        raise InvalidInput(f"task {task_id} is {task.status}: there is nothing to fill in")
    row = session.get(TaskDraft, (task_id, actor.username))
    if row is None:
        session.add(TaskDraft(task_id=task_id, username=actor.username, data=data, saved_at=now))
    else:
        row.data, row.saved_at = data, now


def drop_drafts(session: Session, *, task_id: int) -> None:
    """A completed task's drafts are of no more use to anyone."""
    session.execute(delete(TaskDraft).where(TaskDraft.task_id == task_id))


# -- saved views ---------------------------------------------------------------------------
def saved_views(session: Session, *, actor: Actor) -> list[SavedView]:
    return list(session.execute(select(SavedView).where(SavedView.username == actor.username)
                                .order_by(SavedView.name)).scalars())


def save_view(session: Session, *, actor: Actor, name: str, query: str, now: datetime) -> SavedView:
    """Keep an inbox query string under a name (saving a name again replaces its query)."""
    label = (name or "").strip()
    if not label or len(label) > MAX_VIEW_NAME:
        raise InvalidInput(f"a view's name is 1 to {MAX_VIEW_NAME} characters", field="name")
    # Kept as a normalised query string: a bookmark and a saved view are the same thing.
    normalised = urlencode(parse_qsl(query or "", keep_blank_values=False))
    if len(normalised) > MAX_VIEW_QUERY:
        raise InvalidInput("that view's filters are too long to keep", field="query")
    row = session.execute(select(SavedView).where(SavedView.username == actor.username,
                                                  SavedView.name == label)).scalar_one_or_none()
    if row is None:
        row = SavedView(username=actor.username, name=label, query=normalised, created_at=now)
        session.add(row)
    else:
        row.query = normalised
    session.flush()
    return row


def delete_view(session: Session, *, actor: Actor, view_id: int) -> None:
    row = session.get(SavedView, view_id)
    if row is None or row.username != actor.username:
        raise NotFound(f"no saved view {view_id}")
    session.delete(row)


# -- notifications -------------------------------------------------------------------------
def notifications(session: Session, *, actor: Actor, unread_only: bool = False, read: bool | None = None,
                  limit: int = 50, offset: int = 0) -> tuple[list[Notification], int]:
    """The person's reminders and escalations (the outbox rows addressed to them), newest
    first, with how many there are in all; ``read`` True or False (or ``unread_only``): only
    those they have or have not read. The pages and the API both list them here."""
    where = [Notification.recipient == actor.username]
    if unread_only or read is False:
        where.append(Notification.read_at.is_(None))
    elif read is True:
        where.append(Notification.read_at.is_not(None))
    total = session.execute(select(func.count()).select_from(Notification).where(*where)).scalar_one()
    rows = session.execute(select(Notification).where(*where).order_by(Notification.id.desc())
                           .limit(limit).offset(offset)).scalars().all()
    return list(rows), int(total)


def unread_count(session: Session, *, actor: Actor) -> int:
    return int(session.execute(select(func.count()).select_from(Notification).where(
        Notification.recipient == actor.username, Notification.read_at.is_(None))).scalar_one())


def mark_read(session: Session, *, actor: Actor, now: datetime, ids: list[int] | None = None) -> int:
    """Mark the person's notifications read (these ids, or all); returns how many changed."""
    where = [Notification.recipient == actor.username, Notification.read_at.is_(None)]
    if ids is not None:
        where.append(Notification.id.in_(ids))
    return rowcount(session.execute(update(Notification).where(*where).values(read_at=now)))


def read_one(session: Session, *, actor: Actor, notification_id: int, now: datetime) -> Notification:
    """Mark one of the person's notifications read (again is no change) and return it; another
    person's does not exist for them."""
    row = session.execute(select(Notification).where(
        Notification.id == notification_id, Notification.recipient == actor.username)).scalar_one_or_none()
    if row is None:
        raise NotificationNotFound(f"no notification {notification_id}")
    if row.read_at is None:
        row.read_at = now
    return row


# -- language ------------------------------------------------------------------------------
def locale_of(session: Session, username: str) -> str | None:
    return session.execute(select(User.locale).where(User.username == username)).scalar_one_or_none()


def set_locale(session: Session, *, actor: Actor, locale: str) -> None:
    if locale not in LOCALES:
        raise InvalidInput(f"language must be one of {', '.join(LOCALES)}", field="locale")
    user = session.execute(select(User).where(User.username == actor.username)).scalar_one()
    user.locale = locale


def readable_case(session: Session, *, business_key: str, actor: Actor) -> ProcessInstance:
    """The case with this business key the reader may see (the newest, if several processes
    share a key), else 404."""
    rows = session.execute(select(ProcessInstance.id).where(ProcessInstance.business_key == business_key)
                           .order_by(ProcessInstance.id.desc())).scalars().all()
    for instance_id in rows:
        if instances.readable(session, instance_id, actor):
            return instances.get(session, instance_id, actor=actor)
    raise InstanceNotFound(f"no case {business_key}")


def open_steps(session: Session, *, instance: ProcessInstance, actor: Actor) -> list[Task]:
    """The case's open steps, but those the reader is recused from (the case is readable)."""
    found = session.execute(select(Task).where(Task.instance_id == instance.id, Task.status.in_(ACTIVE_TASK_STATES))
                            .order_by(Task.id)).scalars().all()
    return [t for t in found if not tasks.is_excluded(t, actor)]


@dataclass
class StepDone:
    """One completion of a step: by whom, when, how long it was open, and the data it wrote
    (as the reader may see it)."""

    element_id: str
    by: str | None
    at: datetime
    open_seconds: float | None
    data: dict[str, Any]


def steps_done(session: Session, *, instance: ProcessInstance, events: list[Any]) -> dict[str, list[StepDone]]:
    """The completions in ``events`` (the case's screened history), by element."""
    rows = {t.task_uuid: t for t in session.execute(select(Task).where(
        Task.instance_id == instance.id, Task.status == TaskStatus.COMPLETED)).scalars()}
    found: dict[str, list[StepDone]] = {}
    for event in events:
        element = (event.data or {}).get("element_id")
        if event.kind != "task.completed" or not element:
            continue
        row = rows.get(event.task_uuid or "")
        opened = row.created_at if row is not None else None
        found.setdefault(element, []).append(StepDone(
            element_id=element, by=event.actor, at=event.occurred_at,
            open_seconds=(event.occurred_at - opened).total_seconds() if opened else None,
            data=dict((event.data or {}).get("data") or {})))
    return found


def related_cases(session: Session, *, instance: ProcessInstance, data: dict[str, Any],
                  actor: Actor) -> list[ProcessInstance]:
    """The case that started this one by a message (a callback opened by a closure) and the
    cases this one started or told (its ``message.sent`` events), those the reader may see."""
    ids: list[int] = []
    origin = data.get("origin_business_key")
    if origin:
        ids += session.execute(select(ProcessInstance.id).where(ProcessInstance.business_key == origin)).scalars().all()
    for event in instances.history(session, instance.id, actor=actor):
        if event.kind == "message.sent" and isinstance((event.data or {}).get("to_instance"), int):
            ids.append(event.data["to_instance"])
    found = []
    for related_id in dict.fromkeys(i for i in ids if i != instance.id):
        if instances.readable(session, related_id, actor):
            found.append(instances.get(session, related_id, actor=actor))
    return found
