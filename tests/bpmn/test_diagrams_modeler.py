"""Every diagram opens in bpmn-js / Camunda Modeler without an import warning.

The check is worklist_ui/tools/check_bpmn_import.mjs under Node: bpmn-moddle with the
descriptors Camunda Modeler loads (its parse warnings) plus bpmn-js's import walk (its
import warnings) and the DI completeness bpmn-js silently skips. `make test` installs
node_modules; without node or them these tests fail (never skip), so a CI run cannot pass
without having checked the diagrams.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from lxml import etree

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
UI = ROOT / "worklist_ui"
SCRIPT = UI / "tools" / "check_bpmn_import.mjs"

NS = {"bpmn": "http://www.omg.org/spec/BPMN/20100524/MODEL",
      "bpmndi": "http://www.omg.org/spec/BPMN/20100524/DI",
      "dc": "http://www.omg.org/spec/DD/20100524/DC",
      "di": "http://www.omg.org/spec/DD/20100524/DI"}
CAMUNDA = "http://camunda.org/schema/1.0/bpmn"
SPIFF = "http://spiffworkflow.org/bpmn/schema/1.0/core"


def _check(files: list[Path]) -> tuple[int, dict[str, list[dict]]]:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the BPMN import check runs under Node.js 20+; install Node.js and npm "
                    "and run `make test` (it installs worklist_ui/node_modules)", pytrace=False)
    wanted = json.loads((UI / "package.json").read_text(encoding="utf-8"))["devDependencies"]
    missing = [name for name in wanted if not (UI / "node_modules" / name / "package.json").exists()]
    if missing:
        pytest.fail(f"worklist_ui/node_modules lacks {', '.join(missing)}: run `make test`, or "
                    "`npm ci --prefix worklist_ui`", pytrace=False)
    run = subprocess.run([node, str(SCRIPT), *map(str, files)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode in (0, 1), f"the check crashed (exit {run.returncode}):\n{run.stderr}{run.stdout}"
    results = {}
    for line in run.stdout.splitlines():
        entry = json.loads(line)
        results[entry["file"]] = entry["warnings"]
    assert set(results) == set(map(str, files)), run.stdout
    return run.returncode, results


def _described(results: dict[str, list[dict]]) -> str:
    return "\n".join(f"{Path(file).name}: [{w['source']}] {w['element']}: {w['message']}"
                     for file, warnings in results.items() for w in warnings)


def test_every_diagram_imports_without_a_warning():
    diagrams = sorted(WORKFLOWS.glob("*.bpmn"))
    assert len(diagrams) >= 4
    code, results = _check(diagrams)
    assert not any(results.values()), (
        "these diagrams do not open cleanly in bpmn-js / Camunda Modeler ([parse] and [import] are the warnings "
        "its log would show, [completeness] what it would leave out or draw wrong):\n" + _described(results))
    assert code == 0


# -- the check can fail ------------------------------------------------------------------------
# Each case breaks a copy of a real diagram in one way, chosen by structure (the first user
# task, the first sequence flow...) so the diagram's own edits do not break the test.

def _tree() -> etree._ElementTree:
    return etree.parse(str(WORKFLOWS / "retention.bpmn"))


def _di_of(tree: etree._ElementTree, element_id: str) -> etree._Element:
    (di,) = tree.xpath("//bpmndi:*[@bpmnElement=$id]", namespaces=NS, id=element_id)
    return di


def _first(tree: etree._ElementTree, path: str) -> etree._Element:
    found = tree.find(path, NS)
    assert found is not None, path
    return found


def _extensions(element: etree._Element) -> etree._Element:
    extensions = element.find("bpmn:extensionElements", NS)
    if extensions is None:  # after any bpmn:documentation, as the schema orders them
        extensions = etree.Element(f"{{{NS['bpmn']}}}extensionElements")
        element.insert(len(element.findall("bpmn:documentation", NS)), extensions)
    return extensions


def _unknown_camunda_attribute(tree):
    task = _first(tree, ".//bpmn:userTask")
    task.set(f"{{{CAMUNDA}}}candidateGroupz", "branch:counter_staff")  # a typo of candidateGroups
    return [("parse", task.get("id"), "unknown attribute <camunda:candidateGroupz>")]


def _unknown_camunda_element(tree):
    task = _first(tree, ".//bpmn:serviceTask")
    etree.SubElement(_extensions(task), f"{{{CAMUNDA}}}inputParameterz", name="x")
    return [("parse", None, "unparsable content <camunda:inputParameterz> detected")]


def _sequence_flow_without_edge(tree):
    flow = _first(tree, ".//bpmn:sequenceFlow")
    edge = _di_of(tree, flow.get("id"))
    edge.getparent().remove(edge)
    return [("completeness", flow.get("id"), "has no DI")]


def _dangling_bpmn_element(tree):
    task = _first(tree, ".//bpmn:userTask")
    shape = _di_of(tree, task.get("id"))
    shape.set("bpmnElement", "no_such_element")
    flow_in = _first(tree, f".//bpmn:sequenceFlow[@targetRef='{task.get('id')}']")
    return [("parse", shape.get("id"), "unresolved reference <no_such_element>"),
            ("import", shape.get("id"), "no bpmnElement referenced in <bpmndi:BPMNShape"),
            ("completeness", task.get("id"), "has no DI"),
            # and bpmn-js cannot draw the flows into the task left undrawn
            ("import", flow_in.get("id"), "referenced by <bpmn:SequenceFlow"),
            ]


def _two_shapes_for_one_task(tree):
    task = _first(tree, ".//bpmn:userTask")
    shape = _di_of(tree, task.get("id"))
    twin = copy.deepcopy(shape)
    twin.set("id", shape.get("id") + "_twin")
    shape.addnext(twin)
    return [("import", task.get("id"), f'multiple DI elements defined for <bpmn:UserTask id="{task.get("id")}"')]


def _edge_without_waypoints(tree):
    flow = _first(tree, ".//bpmn:sequenceFlow")
    edge = _di_of(tree, flow.get("id"))
    for waypoint in edge.findall("di:waypoint", NS):
        edge.remove(waypoint)
    return [("completeness", edge.get("id"), "fewer than two di:waypoint")]


def _shape_without_bounds(tree):
    gateway = _first(tree, ".//bpmn:exclusiveGateway")
    shape = _di_of(tree, gateway.get("id"))
    shape.remove(shape.find("dc:Bounds", NS))
    return [("import", gateway.get("id"), "has no dc:Bounds")]


def _boundary_event_on_an_undrawn_host(tree):
    boundary = _first(tree, ".//bpmn:boundaryEvent")
    host = _di_of(tree, boundary.get("attachedToRef"))
    host.getparent().remove(host)
    return [("import", boundary.get("id"), "#attachedToRef not yet drawn")]


BREAKAGES = [_unknown_camunda_attribute, _unknown_camunda_element, _sequence_flow_without_edge,
             _dangling_bpmn_element, _two_shapes_for_one_task, _edge_without_waypoints, _shape_without_bounds,
             _boundary_event_on_an_undrawn_host]


def test_each_breakage_of_a_real_diagram_is_reported(tmp_path):
    expected = {}
    for breakage in BREAKAGES:
        tree = _tree()
        path = tmp_path / f"{breakage.__name__.strip('_')}.bpmn"
        expected[str(path)] = breakage(tree)
        tree.write(str(path), xml_declaration=True, encoding="UTF-8")
    code, results = _check(list(map(Path, expected)))
    assert code == 1
    for file, wanted in expected.items():
        for source, element, text in wanted:
            assert any(w["source"] == source and w["element"] == element and text in w["message"]
                       for w in results[file]), (
                f"{Path(file).name}: no [{source}] {element}: …{text}… among\n" + _described({file: results[file]}))


def test_foreign_namespace_extensions_are_kept_without_a_warning(tmp_path):
    # Camunda Modeler knows no spiffworkflow: descriptor; bpmn-moddle keeps such content as
    # generic elements and attributes and says nothing, so the engine's extensions are fine.
    tree = _tree()
    task = _first(tree, ".//bpmn:userTask")
    task.set(f"{{{SPIFF}}}somethingNew", "x")
    etree.SubElement(_extensions(task), f"{{{SPIFF}}}preScript").text = "x = 1"
    path = tmp_path / "foreign.bpmn"
    tree.write(str(path), xml_declaration=True, encoding="UTF-8")
    code, results = _check([path])
    assert (code, results[str(path)]) == (0, [])
