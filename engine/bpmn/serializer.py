"""Workflow state in, workflow state out.

Specs are stored once per process version; an instance stores only its own state. The
converter below leaves ``spec``/``subprocess_specs`` out of the instance document and takes
them from a per-version cache on load. Every load attaches the safe script engine: a
deserialized SpiffWorkflow workflow otherwise runs expressions with Python's ``eval``.
"""

from __future__ import annotations

import json
import threading
import zlib
from collections import OrderedDict
from typing import Any

from SpiffWorkflow.bpmn.serializer.default.workflow import BpmnWorkflowConverter, WorkflowConverter
from SpiffWorkflow.bpmn.serializer.helpers.registry import DefaultRegistry
from SpiffWorkflow.bpmn.serializer.workflow import BpmnWorkflowSerializer
from SpiffWorkflow.bpmn.specs.bpmn_process_spec import BpmnProcessSpec
from SpiffWorkflow.bpmn.workflow import BpmnWorkflow
from SpiffWorkflow.spiff.serializer.config import SPIFF_CONFIG
from SpiffWorkflow.spiff.serializer.task_spec import ServiceTaskConverter

from engine.bpmn.parser import RegistryServiceTask


class InstanceStateConverter(BpmnWorkflowConverter):  # type: ignore[misc]
    def to_dict(self, workflow: BpmnWorkflow) -> dict[str, Any]:
        dct: dict[str, Any] = WorkflowConverter.to_dict(self, workflow)
        dct["subprocesses"] = self.mapping_to_dict(workflow.subprocesses)
        dct["bpmn_events"] = self.registry.convert(workflow.bpmn_events)
        return dct

    def from_dict(self, dct: dict[str, Any], *, spec: BpmnProcessSpec | None = None,
                  subprocess_specs: dict[str, BpmnProcessSpec] | None = None) -> BpmnWorkflow:
        if spec is None:
            return super().from_dict(dct)
        workflow = self.target_class(spec, subprocess_specs or {}, deserializing=True)
        workflow.tasks = self.mapping_from_dict(dct["tasks"], _uuid, workflow=workflow)
        workflow.task_tree = workflow.tasks.get(_uuid(dct["root"]))
        self.set_default_attributes(workflow, dct)
        self.subprocesses_from_dict(dct["subprocesses"], workflow)
        workflow.bpmn_events = self.registry.restore(dct.pop("bpmn_events", []))
        return workflow


def _uuid(value: str) -> Any:
    from uuid import UUID

    return UUID(value)


def _make_serializer() -> BpmnWorkflowSerializer:
    config = dict(SPIFF_CONFIG)
    config[RegistryServiceTask] = ServiceTaskConverter
    config[BpmnWorkflow] = InstanceStateConverter
    registry = BpmnWorkflowSerializer.configure(config, DefaultRegistry())
    return BpmnWorkflowSerializer(registry)


SERIALIZER = _make_serializer()
STATE_FORMAT = 1


def dump_spec(spec: BpmnProcessSpec, subprocess_specs: dict[str, BpmnProcessSpec]) -> str:
    registry = SERIALIZER.registry
    return json.dumps({
        "spec": registry.convert(spec),
        "subprocess_specs": {k: registry.convert(v) for k, v in subprocess_specs.items()},
    })


def load_spec(spec_json: str) -> tuple[BpmnProcessSpec, dict[str, BpmnProcessSpec]]:
    registry = SERIALIZER.registry
    doc = json.loads(spec_json)
    spec = registry.restore(doc["spec"])
    subprocess_specs = {k: registry.restore(v) for k, v in doc["subprocess_specs"].items()}
    return spec, subprocess_specs


class SpecCache:
    """Restored specs by process-version id. Versions are immutable, so entries never go
    stale; specs are read-only at run time and safe to share between workflows."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._specs: dict[int, tuple[BpmnProcessSpec, dict[str, BpmnProcessSpec]]] = {}

    def get(self, version_id: int, loader: Any) -> tuple[BpmnProcessSpec, dict[str, BpmnProcessSpec]]:
        cached = self._specs.get(version_id)
        if cached is None:
            cached = load_spec(loader())
            with self._lock:
                self._specs[version_id] = cached
        return cached


def dump_state(workflow: BpmnWorkflow) -> bytes:
    registry = SERIALIZER.registry
    registry._encoder_mode = True
    try:
        dct = registry.convert(workflow)
    finally:
        registry._encoder_mode = False
    dct["state_format"] = STATE_FORMAT
    dct["serializer_version"] = SERIALIZER.VERSION
    return zlib.compress(json.dumps(dct, separators=(",", ":"), cls=SERIALIZER._encoder_cls).encode(), 1)


def load_state(blob: bytes, spec: BpmnProcessSpec, subprocess_specs: dict[str, BpmnProcessSpec],
               script_engine: Any) -> BpmnWorkflow:
    dct = json.loads(zlib.decompress(blob))
    dct.pop("state_format", None)
    SERIALIZER.migrate(dct)
    workflow: BpmnWorkflow = SERIALIZER.registry.restore(
        dct, spec=spec, subprocess_specs=subprocess_specs
    )
    workflow.script_engine = script_engine
    return workflow


class WorkflowCache:
    """Workflows kept between units of work, so the next change to an instance skips
    restoring its state (a fifth of a step's CPU).

    An entry is the state blob a workflow was saved as and the workflow object itself, put
    back only after its transaction committed. It is used only while the instance's stored
    blob is byte-for-byte that one: another process's change, a migration's rewrite, an
    administrator's correction all give a different blob, and the state is restored from it as
    before. ``take`` removes the entry, so one workflow object is never in two units of work
    at once, and one that fails or rolls back is never seen again."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[bytes, BpmnWorkflow]] = OrderedDict()

    def take(self, instance_id: int, state: bytes) -> BpmnWorkflow | None:
        with self._lock:
            entry = self._entries.pop(instance_id, None)
        if entry is None or entry[0] != state:
            return None
        return entry[1]

    def put(self, instance_id: int, state: bytes, workflow: BpmnWorkflow) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[instance_id] = (state, workflow)
            self._entries.move_to_end(instance_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
