#!/usr/bin/env node
// Checks that each BPMN file given opens in Camunda Modeler (Camunda 7 diagrams) with no
// import warning, without a browser: bpmn-js's importer needs a DOM and SVG text layout, so
// this runs the two halves of an import that decide its warnings.
//
//  1. parse: bpmn-moddle's fromXML with the descriptors Camunda Modeler loads for a Camunda 7
//     diagram (camunda:, modeler:). Its warnings are exactly the ones bpmn-js passes on:
//     unparsable content, unresolved references, unknown types and attributes in a known
//     namespace. A namespace with no descriptor (spiffworkflow:) is kept as generic content
//     without a warning, as in the Modeler.
//  2. import: the walk of bpmn-js 18 (lib/import/BpmnTreeWalker.js, Importer.js) and the
//     throws of BpmnImporter.add and diagram-js's Canvas, redone over the parsed model with
//     the same messages, so a finding reads as Camunda Modeler's log would show it.
//
// On top of those, "completeness" findings that bpmn-js does not warn about but that leave
// the drawing wrong: an element the walk reaches with no DI is silently left out, an edge
// with fewer than two waypoints is drawn as a straight line between the centres of its ends,
// and DI whose element is never drawn is dropped.
//
// Usage: node check_bpmn_import.mjs FILE.bpmn...
// Prints one JSON object per file, {"file": ..., "warnings": [{source, element, message}]},
// and exits 1 if any file has a warning (2 on a usage error).

import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';

import { BpmnModdle } from 'bpmn-moddle';

const require = createRequire(import.meta.url);

// The descriptors Camunda Modeler registers for a Camunda 7 (Camunda Platform) diagram.
const MODDLE_EXTENSIONS = {
  camunda: require('camunda-bpmn-moddle/resources/camunda.json'),
  modeler: require('modeler-moddle/resources/modeler.json')
};

function is(element, type) {
  return Boolean(element && element.$instanceOf && element.$instanceOf(type));
}

// bpmn-js's own rendering of an element in its messages (lib/import/Util.js).
function elementToString(e) {
  if (!e) {
    return '<null>';
  }
  return '<' + e.$type + (e.id ? ' id="' + e.id : '') + '" />';
}

// bpmn-js lib/util/LabelUtil.js: which elements get a separate label shape, and its text.
function isLabelExternal(semantic) {
  return ['bpmn:Event', 'bpmn:Gateway', 'bpmn:DataStoreReference', 'bpmn:DataObjectReference',
    'bpmn:DataInput', 'bpmn:DataOutput', 'bpmn:SequenceFlow', 'bpmn:MessageFlow', 'bpmn:Group']
    .some(type => is(semantic, type));
}

function labelText(semantic) {
  if (['bpmn:FlowElement', 'bpmn:Participant', 'bpmn:Lane', 'bpmn:SequenceFlow', 'bpmn:MessageFlow',
    'bpmn:DataInput', 'bpmn:DataOutput'].some(type => is(semantic, type))) {
    return semantic.name || '';
  }
  if (is(semantic, 'bpmn:TextAnnotation')) {
    return semantic.text || '';
  }
  if (is(semantic, 'bpmn:Group')) {
    return (semantic.categoryValueRef && semantic.categoryValueRef.value) || '';
  }
  return '';
}

class FatalImportError extends Error {}

/**
 * The import of bpmn-js (importBpmnDiagram + BpmnTreeWalker + BpmnImporter.add), without the
 * graphics: the element registry is a map of ids, so an id drawn twice, an edge to an element
 * not drawn, a boundary event without its host and a shape without bounds fail as there.
 */
function importDefinitions(definitions, report) {
  const registry = new Map(); // diagram-js ElementRegistry: id -> semantic element
  const drawnBy = new Map(); // DI element -> the semantic element it drew
  const reachedWithoutDi = new Map(); // id -> semantic element the walk found no DI for
  const failed = new Set(); // semantic elements with an import warning already
  const handledElements = new Set();
  const deferred = [];
  let diMap = new Map();

  const warn = (message, element) => {
    if (element) {
      failed.add(element);
    }
    report('import', element, message);
  };

  function ensureValid(id) {
    if (!id) {
      throw new Error('element must have an id');
    }
    if (registry.has(id)) {
      throw new Error('element <' + id + '> already exists');
    }
  }

  function addToCanvas(id, semantic) {
    ensureValid(id);
    registry.set(id, semantic);
  }

  function connectedElement(semantic, side) {
    let refSemantic = semantic[side + 'Ref'];
    if (side === 'source' && semantic.$type === 'bpmn:DataInputAssociation') {
      refSemantic = refSemantic && refSemantic[0];
    }
    if ((side === 'source' && semantic.$type === 'bpmn:DataOutputAssociation') ||
        (side === 'target' && semantic.$type === 'bpmn:DataInputAssociation')) {
      refSemantic = semantic.$parent;
    }
    if (refSemantic && registry.has(refSemantic.id)) {
      return refSemantic;
    }
    if (refSemantic) {
      throw new Error(`element ${elementToString(refSemantic)} referenced by ${elementToString(semantic)}` +
        `#${side}Ref not yet drawn`);
    }
    throw new Error(`${elementToString(semantic)}#${side} Ref not specified`);
  }

  // BpmnImporter.prototype.add
  function add(semantic, di) {
    if (is(di, 'bpmndi:BPMNPlane')) {
      addToCanvas(is(semantic, 'bpmn:SubProcess') ? semantic.id + '_plane' : semantic.id, semantic);
    } else if (is(di, 'bpmndi:BPMNShape')) {
      if (!di.bounds) {
        // bpmn-js reads di.bounds.x and fails with this TypeError; the element is not drawn.
        throw new Error("Cannot read properties of undefined (reading 'x') " +
          `(BPMNShape ${di.id || ''} has no dc:Bounds)`);
      }
      if (is(semantic, 'bpmn:BoundaryEvent')) {
        const host = semantic.attachedToRef;
        if (!host) {
          throw new Error(`missing ${elementToString(semantic)}#attachedToRef`);
        }
        if (!registry.has(host.id)) {
          throw new Error(`element ${elementToString(host)} referenced by ${elementToString(semantic)}` +
            '#attachedToRef not yet drawn');
        }
      }
      addToCanvas(semantic.id, semantic);
    } else if (is(di, 'bpmndi:BPMNEdge')) {
      connectedElement(semantic, 'source');
      connectedElement(semantic, 'target');
      addToCanvas(semantic.id, semantic);
    } else {
      throw new Error(`unknown di ${elementToString(di)} for element ${elementToString(semantic)}`);
    }
    drawnBy.set(di, semantic);
    if (isLabelExternal(semantic) && labelText(semantic)) {
      addToCanvas(semantic.id + '_label', semantic);
    }
    return semantic;
  }

  // BpmnTreeWalker: returns the element drawn, which is the context of its children
  function visitIfDi(element) {
    try {
      if (!diMap.has(element.id)) {
        reachedWithoutDi.set(element.id, element);
      }
      const drawnElement = diMap.has(element.id) && add(element, diMap.get(element.id));
      handledElements.add(element);
      return drawnElement;
    } catch (error) {
      warn(error.message, element);
      return undefined;
    }
  }

  function registerDi(di) {
    const bpmnElement = di.bpmnElement;
    if (bpmnElement) {
      if (diMap.has(bpmnElement.id)) {
        warn(`multiple DI elements defined for ${elementToString(bpmnElement)}`, bpmnElement);
      } else {
        diMap.set(bpmnElement.id, di);
      }
    } else {
      report('import', di, `no bpmnElement referenced in ${elementToString(di)}`);
    }
  }

  function handleArtifacts(artifacts) {
    for (const artifact of artifacts || []) {
      if (is(artifact, 'bpmn:Association')) {
        deferred.push(() => visitIfDi(artifact));
      } else {
        visitIfDi(artifact);
      }
    }
  }

  function handleIoSpecification(io) {
    if (!io) {
      return;
    }
    for (const data of [...(io.dataInputs || []), ...(io.dataOutputs || [])]) {
      visitIfDi(data);
    }
  }

  function handleFlowNode(flowNode, ctx) {
    const childCtx = visitIfDi(flowNode);
    if (is(flowNode, 'bpmn:SubProcess')) {
      handleFlowElementsContainer(flowNode, childCtx || ctx);
      handleArtifacts(flowNode.artifacts);
    }
    if (is(flowNode, 'bpmn:Activity')) {
      handleIoSpecification(flowNode.ioSpecification);
    }
    deferred.push(() => {
      for (const association of [...(flowNode.dataInputAssociations || []),
        ...(flowNode.dataOutputAssociations || [])]) {
        visitIfDi(association);
      }
    });
  }

  function handleLaneSet(laneSet, ctx) {
    for (const lane of laneSet.lanes || []) {
      deferred.push(() => {
        const laneCtx = visitIfDi(lane);
        if (lane.childLaneSet) {
          handleLaneSet(lane.childLaneSet, laneCtx || ctx);
        }
      });
    }
  }

  function handleFlowElementsContainer(container, ctx) {
    for (const flowElement of container.flowElements || []) {
      if (is(flowElement, 'bpmn:SequenceFlow')) {
        deferred.push(() => visitIfDi(flowElement));
      } else if (is(flowElement, 'bpmn:BoundaryEvent')) {
        deferred.unshift(() => handleFlowNode(flowElement, ctx));
      } else if (is(flowElement, 'bpmn:FlowNode')) {
        handleFlowNode(flowElement, ctx);
      } else if (is(flowElement, 'bpmn:DataObject')) {
        // drawn through its DataObjectReference
      } else if (is(flowElement, 'bpmn:DataStoreReference') || is(flowElement, 'bpmn:DataObjectReference')) {
        visitIfDi(flowElement);
      } else {
        warn(`unrecognized flowElement ${elementToString(flowElement)} in context ` +
          `${elementToString(ctx)}`, flowElement);
      }
    }
    for (const laneSet of container.laneSets || []) {
      handleLaneSet(laneSet, ctx);
    }
  }

  function handleProcess(process, ctx) {
    handleFlowElementsContainer(process, ctx);
    handleIoSpecification(process.ioSpecification);
    handleArtifacts(process.artifacts);
    handledElements.add(process);
  }

  function handleCollaboration(collaboration, ctx) {
    for (const participant of collaboration.participants || []) {
      const participantCtx = visitIfDi(participant);
      if (participant.processRef) {
        handleProcess(participant.processRef, participantCtx || ctx);
      }
    }
    deferred.push(() => {
      for (const messageFlow of collaboration.messageFlows || []) {
        visitIfDi(messageFlow);
      }
    });
    handleArtifacts(collaboration.artifacts);
  }

  function handleDefinitions(diagram) {
    diMap = new Map();
    const plane = diagram.plane;
    if (!plane) {
      throw new FatalImportError(`no plane for ${elementToString(diagram)}`);
    }
    registerDi(plane);
    for (const planeElement of plane.planeElement || []) {
      registerDi(planeElement);
    }

    let rootElement = plane.bpmnElement;
    if (!rootElement) {
      rootElement = (definitions.rootElements || [])
        .find(e => is(e, 'bpmn:Process') || is(e, 'bpmn:Collaboration'));
      if (!rootElement) {
        throw new FatalImportError('no process or collaboration to display');
      }
      report('import', plane, `correcting missing bpmnElement on ${elementToString(plane)} to ` +
        elementToString(rootElement));
      plane.bpmnElement = rootElement;
      registerDi(plane);
    }

    const ctx = add(rootElement, plane);
    if (is(rootElement, 'bpmn:Process') || is(rootElement, 'bpmn:SubProcess')) {
      handleProcess(rootElement, ctx);
    } else if (is(rootElement, 'bpmn:Collaboration')) {
      handleCollaboration(rootElement, ctx);
      // bpmn-js also draws processes outside the collaboration, but only those with lanes
      for (const process of (definitions.rootElements || [])
        .filter(e => !handledElements.has(e) && is(e, 'bpmn:Process') && e.laneSets)) {
        handleProcess(process, ctx);
      }
    } else {
      throw new FatalImportError(`unsupported bpmnElement for ${elementToString(plane)}: ` +
        elementToString(rootElement));
    }
    while (deferred.length) {
      deferred.shift()();
    }
  }

  const diagrams = diagramsToImport(definitions);
  if (!diagrams) {
    throw new FatalImportError('no diagram to display');
  }
  for (const diagram of diagrams) {
    handleDefinitions(diagram);
  }

  // completeness: what bpmn-js leaves out or draws wrong without a warning
  const drawn = new Set(drawnBy.values());
  for (const element of reachedWithoutDi.values()) {
    if (!drawn.has(element) && !failed.has(element)) {
      report('completeness', element, `${elementToString(element)} has no DI (BPMNShape/BPMNEdge): ` +
        'bpmn-js leaves it out of the drawing');
    }
  }
  for (const element of definitions.rootElements || []) {
    if (is(element, 'bpmn:Process') && !handledElements.has(element)) {
      report('completeness', element, `${elementToString(element)} is not shown: no participant of the ` +
        'displayed collaboration references it');
    }
  }
  for (const diagram of definitions.diagrams || []) {
    for (const di of (diagram.plane && diagram.plane.planeElement) || []) {
      const semantic = di.bpmnElement;
      if (semantic && !drawnBy.has(di) && !failed.has(semantic)) {
        report('completeness', di, `${elementToString(di)} for ${elementToString(semantic)} is never ` +
          'drawn: its element is not part of the displayed diagram');
      }
      if (is(di, 'bpmndi:BPMNEdge') && (!di.waypoint || di.waypoint.length < 2)) {
        report('completeness', di, `${elementToString(di)} for ${elementToString(semantic)} has fewer than ` +
          'two di:waypoint: bpmn-js draws a straight line between the centres of its ends');
      }
    }
  }
}

// bpmn-js Importer.js getDiagramsToImport: the first diagram, and the diagrams of the
// collapsed sub-processes within the same processes (drill-down planes).
function diagramsToImport(definitions) {
  const first = definitions.diagrams && definitions.diagrams[0];
  if (!first || !first.plane) {
    return undefined;
  }
  const bpmnElement = first.plane.bpmnElement;
  let rootElement = bpmnElement;
  if (bpmnElement && !is(bpmnElement, 'bpmn:Process') && !is(bpmnElement, 'bpmn:Collaboration')) {
    rootElement = bpmnElement;
    while (rootElement && !is(rootElement, 'bpmn:Process')) {
      rootElement = rootElement.$parent;
    }
  }
  let collaboration;
  if (is(rootElement, 'bpmn:Collaboration')) {
    collaboration = rootElement;
  } else {
    collaboration = (definitions.rootElements || []).find(e => is(e, 'bpmn:Collaboration') &&
      (e.participants || []).some(p => p.processRef === rootElement));
  }
  let roots = [rootElement];
  if (collaboration) {
    roots = (collaboration.participants || []).map(p => p.processRef);
    roots.push(collaboration);
  }
  const allChildren = new Set();
  const collect = element => {
    if (!element || allChildren.has(element)) {
      return;
    }
    allChildren.add(element);
    for (const child of element.flowElements || []) {
      collect(child);
    }
  };
  roots.forEach(collect);

  const result = [first];
  const handled = [bpmnElement];
  for (const diagram of definitions.diagrams) {
    const businessObject = diagram.plane && diagram.plane.bpmnElement;
    if (businessObject && allChildren.has(businessObject) && !handled.includes(businessObject)) {
      result.push(diagram);
      handled.push(businessObject);
    }
  }
  return result;
}

async function checkFile(file) {
  const warnings = [];
  const report = (source, element, message) => {
    warnings.push({ source, element: (element && element.id) || null, message });
  };
  let xml;
  try {
    xml = await readFile(file, 'utf8');
  } catch (error) {
    report('error', null, `cannot read the file: ${error.message}`);
    return { file, warnings };
  }
  const moddle = new BpmnModdle(MODDLE_EXTENSIONS);
  let parsed;
  try {
    parsed = await moddle.fromXML(xml, 'bpmn:Definitions');
  } catch (error) {
    report('error', null, `failed to parse: ${error.message}`);
    for (const warning of error.warnings || []) {
      report('parse', warning.element, warning.message);
    }
    return { file, warnings };
  }
  for (const warning of parsed.warnings) {
    report('parse', warning.element, warning.message);
  }
  try {
    importDefinitions(parsed.rootElement, report);
  } catch (error) {
    // bpmn-js would refuse the whole import ("failed to import" in the Modeler)
    report('error', null, `import failed: ${error.message}`);
    if (!(error instanceof FatalImportError)) {
      report('error', null, String(error.stack));
    }
  }
  return { file, warnings };
}

const files = process.argv.slice(2);
if (!files.length) {
  process.stderr.write('usage: node check_bpmn_import.mjs FILE.bpmn...\n');
  process.exit(2);
}
let anyWarning = false;
for (const file of files) {
  const result = await checkFile(file);
  anyWarning ||= result.warnings.length > 0;
  process.stdout.write(JSON.stringify(result) + '\n');
}
process.exitCode = anyWarning ? 1 : 0;
