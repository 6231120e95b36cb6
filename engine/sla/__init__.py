"""SLA clocks: policies as data, due dates on business calendars, milestones as timers.

A policy says which tasks it applies to (process, element or lane, minimum priority,
instance variables such as the VIP tier; ordered, first match wins), the target (amount,
unit, business hours), the milestones at fractions of the target and whether the clock may
pause. A task's due date comes from ``camunda:dueDate`` when the diagram gives one (that
wins), else from the first matching policy. Milestones become ``bpm_timer`` rows of kind
``sla``: firing one notifies, raises priority, reassigns to a role or opens an escalation
task. Reaching the target records a breach (an audit event and ``breached_at``), which
completing the task late does not clear.

- ``calendar_store``: the calendar, business hours and active policies, cached by revision.
- ``clock``: matching a policy, starting a task's clock, its state, pausing and resuming.
- ``milestones``: milestone timers, and what firing one does.
- ``admin``: what a process owner edits (days, business hours, policies) and the recompute
  of open tasks' due dates that follows an edit.
- ``host``: what this package needs of the engine's runtime.
"""
