// Every page: htmx for partial updates, Alpine.js for the few widgets with state, the CSRF
// token on every htmx request, and the inbox's keyboard triage (j/k move, Enter opens,
// c claims, / filters).
import htmx from "htmx.org";
import Alpine from "alpinejs";

window.htmx = htmx;
window.Alpine = Alpine;

// A 422 carries the form again with its errors: swap it in, as a 200 would.
htmx.config.responseHandling = [
  { code: "204", swap: false },
  { code: "[23]..", swap: true },
  { code: "422", swap: true },
  { code: "[45]..", swap: false, error: true },
];

document.addEventListener("htmx:configRequest", (event) => {
  const token = document.querySelector('meta[name="csrf-token"]');
  if (token) event.detail.headers["X-CSRFToken"] = token.content;
});

// A page or a swapped fragment that asks for focus gets it (an error summary), so a long
// form that was refused never seems to "do nothing".
function focusRequested(root) {
  const target = root.querySelector("[data-focus]");
  if (target) {
    target.focus();
    target.scrollIntoView({ block: "start" });
  }
}
document.addEventListener("DOMContentLoaded", () => focusRequested(document));
document.addEventListener("htmx:afterSwap", (event) => focusRequested(event.detail.target));

function rows() {
  return Array.from(document.querySelectorAll("[data-task-row]"));
}

function move(step) {
  const all = rows();
  if (!all.length) return;
  const current = all.indexOf(document.activeElement.closest("[data-task-row]"));
  const next = all[Math.min(Math.max(current + step, 0), all.length - 1)];
  next.focus();
}

document.addEventListener("keydown", (event) => {
  const typing = event.target.closest("input, textarea, select, [contenteditable]");
  if (typing || event.ctrlKey || event.metaKey || event.altKey || !document.querySelector("[data-inbox]")) return;
  const row = document.activeElement.closest("[data-task-row]");
  if (event.key === "j") { move(1); event.preventDefault(); }
  else if (event.key === "k") { move(-1); event.preventDefault(); }
  else if (event.key === "Enter" && row) { window.location = row.dataset.href; }
  else if (event.key === "c" && row) { row.querySelector("[data-claim]")?.click(); }
  else if (event.key === "/") { document.querySelector("[data-filter]")?.focus(); event.preventDefault(); }
});

Alpine.start();
