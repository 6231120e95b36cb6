// The draft's forms: choose one (or add one), edit its JSON Schema as text, and see after each
// pause in typing what the server finds wrong (the meta-schema, the deploy lint's form rules,
// what the task page cannot render) and the form as the task page renders it — the server
// renders the preview with the task page's own template, so there is one renderer. "Try
// submitting" sends the preview's values and shows the task page's error summary for them.
// Saving puts the form into the draft with the draft's ETag (shared with the diagram editor
// through #modeler's data-etag), so a save over someone else's is refused, never merged.
// Also: importing a bundle zip into the draft.

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

export function startForms(section, root) {
  const choice = section.querySelector("#form-choice");
  const text = section.querySelector("#form-text");
  const preview = section.querySelector("#form-preview");
  const problems = section.querySelector("#form-problems");
  const message = section.querySelector("#form-message");
  const formUrl = (key) => section.dataset.formUrl.replace("__KEY__", encodeURIComponent(key));
  let newForm = "";
  let dirty = false; // typed since the form was opened or saved
  let current = "";
  let timer = null;
  let sequence = 0;
  let opening = 0;

  function say(target, words, kind) {
    target.textContent = words;
    target.className = kind ? `flash flash-${kind}` : "";
  }

  function listProblems(list, found) {
    list.replaceChildren();
    for (const problem of found) {
      const item = document.createElement("li");
      const severity = problem.severity || "error";
      item.className = `problem-${severity}`;
      item.dataset.severity = severity;
      const where = problem.field ? `${problem.field}: ` : (problem.file ? `${problem.file}: ` : "");
      const label = severity === "warning" ? section.dataset.textWarning : section.dataset.textError;
      item.textContent = `${label} · ${where}${problem.message}`;
      list.append(item);
    }
  }

  async function render(sample) {
    const mine = ++sequence;
    const body = sample || new FormData();
    body.set("__schema", text.value);
    if (sample) body.set("__submitted", "1");
    const answer = await fetch(section.dataset.previewUrl, {
      method: "POST", body, headers: { "X-CSRFToken": csrf() }, credentials: "same-origin",
    });
    const data = await answer.json().catch(() => ({ problems: [{ message: String(answer.status) }], html: "" }));
    if (mine !== sequence) return; // a later keystroke's answer wins
    listProblems(problems, data.problems || []);
    section.dataset.formState = data.ok ? "ok" : "problems";
    if (data.html !== undefined && (data.html || !data.ok)) preview.innerHTML = data.html;
    const form = preview.querySelector("[data-preview-form]");
    if (form) form.addEventListener("submit", (event) => { event.preventDefault(); render(new FormData(form)); });
    const summary = preview.querySelector("[data-focus]");
    if (sample && summary) summary.focus();
    section.dataset.previewed = String(mine);
  }

  function later() {
    clearTimeout(timer);
    timer = setTimeout(() => render().catch((error) => say(message, String(error), "error")), 400);
  }

  async function open(key) {
    if (!key) return;
    // Only the form asked for last may fill the editor: an earlier answer arriving late (the
    // page's first load racing the owner's choice) would put another form's text under this
    // key, or undo what the owner has typed since.
    // The editor is read-only until the chosen form is in it, so nothing typed meanwhile is
    // replaced by the form's text when it arrives.
    const mine = ++opening;
    text.readOnly = true;
    section.setAttribute("aria-busy", "true");
    const answer = await fetch(formUrl(key), { credentials: "same-origin" });
    const data = await answer.json();
    if (mine !== opening) return;
    text.readOnly = false;
    section.removeAttribute("aria-busy");
    if (!answer.ok) { say(message, data.message, "error"); return; }
    text.value = data.text;
    dirty = false;
    current = key;
    say(message, "");
    await render();
  }

  async function load(selected) {
    const answer = await fetch(section.dataset.listUrl, { credentials: "same-origin" });
    const data = await answer.json();
    newForm = data.new_form;
    choice.replaceChildren();
    for (const form of data.forms) {
      const option = document.createElement("option");
      option.value = form.key;
      option.textContent = form.title === form.key ? form.key : `${form.key} · ${form.title}`;
      choice.append(option);
    }
    document.dispatchEvent(new CustomEvent("bpm:draft-forms", { detail: { forms: data.forms.map((f) => f.key) } }));
    if (selected) choice.value = selected;
    await open(choice.value);
  }

  function add() {
    const input = section.querySelector("#new-form-key");
    const key = input.value.trim();
    if (dirty && !window.confirm(section.dataset.textUnsaved)) return;
    if (!/^[a-z][a-z0-9_]{0,63}$/.test(key)) { say(message, section.dataset.textBadKey, "error"); return; }
    if ([...choice.options].some((o) => o.value === key)) { say(message, section.dataset.textExists, "warning"); return; }
    const option = document.createElement("option");
    option.value = key;
    option.textContent = key;
    choice.append(option);
    choice.value = key;
    text.value = newForm;
    dirty = true;
    current = key;
    input.value = "";
    say(message, section.dataset.textNew);
    return render();
  }

  async function save() {
    const key = choice.value;
    const answer = await fetch(formUrl(key), {
      method: "PUT", body: text.value, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), "Content-Type": "application/json", "If-Match": root.dataset.etag },
    });
    const data = await answer.json().catch(() => ({ message: String(answer.status) }));
    if (answer.headers.get("ETag")) root.dataset.etag = answer.headers.get("ETag");
    if (data.problems) listProblems(problems, data.problems);
    say(message, data.message, answer.ok ? (data.problems && data.problems.length ? "warning" : null)
      : (answer.status === 409 ? "warning" : "error"));
    if (answer.ok) {
      dirty = false;
      const state = root.querySelector("#draft-state");
      if (state) state.textContent = data.message;
      section.dataset.saved = key;
      await load(key);
    }
  }

  async function importZip() {
    const file = section.querySelector("#import-file").files[0];
    const out = section.querySelector("#import-message");
    const list = section.querySelector("#import-problems");
    if (!file) { say(out, section.dataset.textChooseZip, "error"); return; }
    const url = `${section.dataset.importUrl}?filename=${encodeURIComponent(file.name)}`;
    const answer = await fetch(url, {
      method: "POST", body: file, credentials: "same-origin",
      headers: { "X-CSRFToken": csrf(), "Content-Type": "application/zip", "If-Match": root.dataset.etag },
    });
    const data = await answer.json().catch(() => ({ message: String(answer.status) }));
    listProblems(list, data.problems || []);
    say(out, data.message, answer.ok ? null : "error");
    section.dataset.imported = answer.ok ? "ok" : "refused";
    if (answer.ok) window.location.reload(); // the canvas shows the imported diagram
  }

  const actions = { add, save, import: importZip };
  section.querySelectorAll("[data-form-action]").forEach((button) => {
    button.addEventListener("click", () => {
      button.disabled = true;
      Promise.resolve(actions[button.dataset.formAction]())
        .catch((error) => say(message, String(error), "error"))
        .finally(() => { button.disabled = false; });
    });
  });
  choice.addEventListener("change", () => {
    // Switching forms drops what was typed: ask first, and stay if the owner says no.
    if (dirty && !window.confirm(section.dataset.textUnsaved)) { choice.value = current; return; }
    open(choice.value);
  });
  text.addEventListener("input", () => { dirty = true; later(); });
  return load().then(() => { section.dataset.ready = "true"; });
}
