"""One exception hierarchy for the whole engine.

Every error carries a stable machine-readable ``code``; adapters map the classes to their
own vocabulary in one place (``api/errors.py`` for HTTP, ``api/cli.py`` for exit codes).
The engine never raises HTTP errors itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


class BpmError(Exception):
    code = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class ConfigError(BpmError):
    code = "config_invalid"


class FieldPolicyInvalid(ConfigError):
    """A field-visibility policy file (``workflows/field_policy/*.json``) was refused; the
    app does not start on a policy it cannot read (``engine.field_policy``)."""

    code = "field_policy_invalid"

    def __init__(self, problems: list[str]) -> None:
        # The message lists every problem: ``bpm serve`` and gunicorn print only the message.
        super().__init__("\n  ".join([f"the field policy was refused: {len(problems)} problem(s)", *problems]),
                         problems=problems)
        self.problems = problems


# -- not found ---------------------------------------------------------------------------
class NotFound(BpmError):
    code = "not_found"


class ProcessNotFound(NotFound):
    code = "process_not_found"


class InstanceNotFound(NotFound):
    code = "instance_not_found"


class TaskNotFound(NotFound):
    code = "task_not_found"


class UserNotFound(NotFound):
    code = "user_not_found"


class NotificationNotFound(NotFound):
    code = "notification_not_found"


class MessageNotCorrelated(NotFound):
    """Nobody waits for this message with this key; nothing was changed."""

    code = "message_not_correlated"


# -- who is asking -----------------------------------------------------------------------
class AuthenticationFailed(BpmError):
    code = "unauthenticated"


class SignInThrottled(BpmError):
    """Too many failed sign-ins for a username or from an address: no password is checked
    until ``retry_after`` seconds have passed (engine.access.signin)."""

    code = "signin_throttled"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after


class SignInLocked(SignInThrottled):
    """The username is locked after too many failed sign-ins, until the oldest of them is a
    day old or an administrator unlocks it; audited ``auth.locked_out``."""

    code = "signin_locked"


class PermissionDenied(BpmError):
    code = "forbidden"


class NotCandidate(PermissionDenied):
    code = "not_candidate"


class NotAssignee(PermissionDenied):
    code = "not_assignee"


class Recused(PermissionDenied):
    """The user is excluded from this task (e.g. the subject of a complaint, or QA of their
    own call), whatever their groups or roles."""

    code = "task_recused"


# -- state conflicts ---------------------------------------------------------------------
class Conflict(BpmError):
    code = "conflict"


class TaskNotOpen(Conflict):
    """The task was completed or cancelled, typically by a concurrent request."""

    code = "task_not_open"


class TaskAlreadyClaimed(Conflict):
    code = "task_claimed"


class InstanceNotRunning(Conflict):
    code = "instance_not_running"


class StartNotOffered(Conflict):
    """The start asked for is not one the diagram has: a process with only message start
    events started over the API, or a message the process does not start by. The details
    name the start routes the process does offer."""

    code = "start_not_offered"


class DuplicateBusinessKey(Conflict):
    code = "duplicate_business_key"


class AmbiguousCorrelation(Conflict):
    code = "message_ambiguous"


class IdempotencyKeyReused(Conflict):
    """An idempotency key the sender already used for a different message (another name is
    another key; another correlation key or payload under the same name is this error):
    the first message was processed, this one was not."""

    code = "idempotency_key_reused"


class VersionConflict(Conflict):
    """A deploy meant for the latest version the caller saw, when another was deployed since
    (or a rollback to the version that already is the latest): refused, nothing stored."""

    code = "version_conflict"

    def __init__(self, process_key: str, *, seen: int, latest: Any, message: str | None = None) -> None:
        number = latest.version if latest is not None else 0
        if message is None:
            message = (f"{process_key} is at version {number} now, not version {seen} as when you looked: "
                       "look at what changed, then decide again")
        super().__init__(message, latest_version=number)
        self.latest_version = number


# -- bad input ---------------------------------------------------------------------------
class InvalidInput(BpmError):
    code = "invalid_input"


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class FormValidationError(InvalidInput):
    code = "form_invalid"

    def __init__(self, message: str, errors: list[FieldError]) -> None:
        super().__init__(message, errors=[e.__dict__ for e in errors])
        self.errors = errors


class DataInvalid(InvalidInput):
    """Process variables a caller gave were refused (a reserved name, a value JSON cannot
    carry); each error names the offending entry, like a form's field errors."""

    code = "data_invalid"

    def __init__(self, message: str, errors: list[FieldError]) -> None:
        super().__init__(message, errors=[e.__dict__ for e in errors])
        self.errors = errors


@dataclass(frozen=True)
class Problem:
    """One deploy-lint finding, located so a process owner can fix it."""

    file: str
    line: int | None
    element_id: str | None
    message: str

    def format(self) -> str:
        where = f"{self.file}:{self.line if self.line is not None else 0}"
        return f"{where} {self.element_id or '-'}: {self.message}"


class DeploymentRejected(InvalidInput):
    """Lint or parse problems; nothing was stored."""

    code = "deployment_invalid"

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(
            f"deployment rejected: {len(problems)} problem(s)",
            problems=[p.__dict__ for p in problems],
        )
        self.problems = problems

    def __str__(self) -> str:
        return "\n".join(p.format() for p in self.problems)


class DraftRejected(DeploymentRejected):
    """A draft diagram that may not even be stored (too large, not XML, a DOCTYPE, not this
    process, a script); nothing was saved."""

    code = "draft_invalid"


class DraftConflict(Conflict):
    """A save or deploy of a draft that started from an older revision than the stored one:
    someone saved in between. Refused rather than overwritten; says who saved last."""

    code = "draft_conflict"

    def __init__(self, *, saved_by: str, saved_at: datetime, revision: int) -> None:
        super().__init__(f"the draft was saved by {saved_by} at {saved_at.isoformat()} (revision {revision}) "
                         "after you opened it; reload it, then make your change again")
        self.saved_by = saved_by
        self.saved_at = saved_at
        self.revision = revision


class ExpressionError(InvalidInput):
    code = "expression_invalid"


class DataTooLarge(InvalidInput):
    """Case variables over a configured size (``BPM_MAX_VARIABLE_BYTES``, ``BPM_MAX_CASE_BYTES``):
    a case keeps its variables in its state and in the audit trail, so one oversized upload
    would be stored twice and read on every step. Each error names the variable or the case."""

    code = "data_too_large"

    def __init__(self, message: str, errors: list[FieldError], limit_bytes: int) -> None:
        super().__init__(message, errors=[e.__dict__ for e in errors], limit_bytes=limit_bytes)
        self.errors = errors


# -- client registry and classification --------------------------------------------------
class BranchNotFound(NotFound):
    code = "branch_not_found"


class ServiceGroupNotFound(NotFound):
    code = "service_group_not_found"


class ClientNotFound(NotFound):
    """Also the answer for a client the caller may not see (no existence leak)."""

    code = "client_not_found"


class RuleSetNotFound(NotFound):
    """No classification rules are effective on the date asked for."""

    code = "rule_set_not_found"


class ServiceGroupInvalid(InvalidInput):
    """A service group must have 2–3 members of its branch, at least one of them middle/
    back office (中后台), each in no other group (the brokerage's procedures,
    docs/domain.md#service-groups)."""

    code = "service_group_invalid"


class RevealNotAllowed(PermissionDenied):
    code = "reveal_forbidden"


class StaffAlreadyDeparted(Conflict):
    """The departure was recorded before (the user is inactive): recording it again would
    start a second batch of callbacks."""

    code = "staff_already_departed"


class AuditAnchorInvalid(BpmError):
    """The audit anchors (``BPM_AUDIT_ANCHOR_DIR``) cannot be trusted as they are: a file that
    does not read, is signed with another key or not at all, or does not follow the one
    before it. Nothing is anchored on top of them until someone looks."""

    code = "audit_anchor_invalid"

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n  ".join([f"the audit anchors were refused: {len(problems)} problem(s)", *problems]),
                         problems=problems)
        self.problems = problems
