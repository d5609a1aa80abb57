// The new-run form: check (YAML), data preview, planner, launch. Errors appear next to the field they name.
"use strict";

function formFields() {
  const fields = {};
  for (const input of document.querySelectorAll("#new-form [name]")) {
    if (input.name !== "name" && !input.closest("[hidden]")) fields[input.name] = input.value;
  }
  return {name: document.querySelector("#new-form [name=name]").value.trim(), fields};
}

function clearFieldErrors() {
  document.querySelectorAll("#new-form .field-error").forEach(node => node.remove());
  document.querySelectorAll("#new-form .invalid").forEach(node => node.classList.remove("invalid"));
  showBanner("");
}

function showFieldError(error) {
  const field = error.field || "_form";
  const input = document.querySelector(`#new-form [name="${field}"]`) ||
    (field === "_form" ? null : document.querySelector("#new-form [name=extra]"));
  const message = error.error || String(error);
  if (!input) { showBanner(message); return; }
  input.classList.add("invalid");
  input.closest("label").append(el("div", {class: "field-error", "data-error-for": field}, message));
}

async function formCall(path, extra = {}) {
  clearFieldErrors();
  const status = document.getElementById("form-status");
  status.textContent = t("status.working");
  try {
    const result = await api(path, {...formFields(), ...extra});
    status.textContent = t("status.ok");
    return result;
  } catch (error) {
    status.textContent = "";
    showFieldError(error);
    return null;
  }
}

function showYaml(result) {
  document.getElementById("yaml-box").hidden = false;
  document.getElementById("yaml-text").textContent = result.yaml;
  document.getElementById("yaml-command").textContent = `sftlab train ${result.config_file}`;
  const notes = document.getElementById("yaml-notes");
  notes.textContent = (result.notes || []).join("\n");
  notes.hidden = !notes.textContent;
  const link = document.getElementById("yaml-download");
  link.href = URL.createObjectURL(new Blob([result.yaml], {type: "application/yaml"}));
  link.download = result.config_file.split("/").pop();
}

function showPreview(result) {
  document.getElementById("preview-box").hidden = false;
  const summary = [result.template, result.summary, result.warning].filter(Boolean).join(" | ");
  document.getElementById("preview-summary").textContent = summary;
  document.getElementById("preview-samples").replaceChildren(...result.samples.map((sample, i) => el("div", {class: "sample"},
    el("div", {class: "muted"}, `#${i} ${sample.src} - ${sample.tokens} ${t("preview.tokens")}, ` +
      (sample.label !== null ? `label ${sample.label}` : `${sample.supervised} ${t("preview.supervised")} (${(sample.ratio * 100).toFixed(1)}%)`)),
    el("pre", {}, sample.pieces.map(([text, supervised]) => supervised ? el("mark", {class: "supervised"}, text) : text)))));
}

function toggleStrategyFields() {
  const kind = document.querySelector("#new-form [name='strategy.kind']").value || "full";
  document.querySelectorAll("#new-form [data-strategy]").forEach(label => { label.hidden = label.dataset.strategy !== kind; });
}

routes.new = () => toggleStrategyFields();

window.addEventListener("DOMContentLoaded", () => {
  document.querySelector("#new-form [name='strategy.kind']").addEventListener("change", toggleStrategyFields);
  document.getElementById("btn-check").addEventListener("click", async () => {
    const result = await formCall("/api/form/check");
    if (result) showYaml(result);
  });
  document.getElementById("btn-preview").addEventListener("click", async () => {
    const result = await formCall("/api/form/preview");
    if (result) showPreview(result);
  });
  document.getElementById("btn-plan").addEventListener("click", async () => {
    document.getElementById("plan-box").hidden = false;
    document.getElementById("plan-text").textContent = t("plan.running");
    const result = await formCall("/api/form/plan");
    document.getElementById("plan-text").textContent = result ? result.output : "";
    document.getElementById("plan-box").hidden = !result;
  });
  document.getElementById("btn-launch").addEventListener("click", async () => {
    const check = await formCall("/api/form/check");
    if (!check) return;
    showYaml(check);
    const result = await formCall("/api/runs");
    if (result) location.hash = `#/run/${encodeURIComponent(result.name)}`;
  });
});
