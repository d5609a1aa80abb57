// Runs: the list, a run's live page (curves, stop/resume, evaluate, chat) and the compare view.
"use strict";
const runPage = {name: null, chat: [], detail: null};

function trainRows(rows) { return rows.filter(r => !r.eval); }
function evalRows(rows) { return rows.filter(r => r.eval); }

routes.runs = async () => {
  const rows = await api("/api/runs");
  document.getElementById("runs-empty").hidden = rows.length > 0;
  document.querySelector("#runs-table tbody").replaceChildren(...rows.map(run => el("tr", {"data-run": run.name},
    el("td", {}, el("input", {type: "checkbox", value: run.name})),
    el("td", {}, el("a", {href: `#/run/${encodeURIComponent(run.name)}`}, run.name)),
    el("td", {title: run.error || ""}, statusBadge(run.status)), el("td", {}, run.stage), el("td", {}, run.strategy),
    el("td", {title: run.model}, run.model.split("/").filter(Boolean).pop() || run.model),
    el("td", {}, `${run.step}${run.total_steps ? " / " + run.total_steps : ""}`),
    el("td", {}, fmt(run.loss)), el("td", {}, fmt(run.eval_loss)))));
  board.timer = setInterval(() => { if (location.hash.startsWith("#/runs")) routes.runs(); }, 3000);
};

routes.run = async name => {
  if (runPage.name !== name) { runPage.chat = []; renderChat(); }
  runPage.name = name;
  document.getElementById("run-name").textContent = name;
  await refreshRun();
  board.timer = setInterval(refreshRun, 1000);
};

async function refreshRun() {
  if (!runPage.name || !location.hash.startsWith("#/run/")) return;
  let run;
  try { run = await api(`/api/runs/${encodeURIComponent(runPage.name)}`); } catch (e) { showBanner(e.error); return; }
  runPage.detail = run;
  document.getElementById("run-status").replaceWith(Object.assign(statusBadge(run.status), {id: "run-status"}));
  document.getElementById("page-run").dataset.runStatus = run.status;
  document.getElementById("run-progress").textContent = `${run.step} / ${run.total_steps || "?"}`;
  document.getElementById("run-eta").textContent = run.eta_s === null ? "-" : `${Math.round(run.eta_s)} s`;
  document.getElementById("run-lr").textContent = fmt(run.lr);
  document.getElementById("run-speed").textContent = fmt(run.tokens_per_s);
  document.getElementById("btn-stop").disabled = run.status !== "running";
  document.getElementById("btn-resume").disabled = !run.resumable;
  const train = trainRows(run.rows), evals = evalRows(run.rows);
  drawChart(document.getElementById("chart-loss"), [
    {label: t("run.train"), points: train.map(r => [r.step, r.loss])},
    {label: t("run.validation"), points: evals.map(r => [r.step, r.loss])}]);
  drawChart(document.getElementById("chart-lr"), [{label: "lr", points: train.map(r => [r.step, r.lr])}]);
  drawChart(document.getElementById("chart-speed"), [{label: "tokens/s", points: train.map(r => [r.step, r.tokens_per_s])}]);
  document.querySelector("#run-metrics tbody").replaceChildren(...Object.entries(run.metrics || {}).map(([k, v]) =>
    el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)))));
  document.getElementById("run-card").textContent = run.card || "-";
  document.getElementById("run-config").textContent = run.config_yaml;
  document.getElementById("run-log").textContent = run.log;
  const evalStatus = document.getElementById("eval-status");
  evalStatus.textContent = run.evals.job ? t("status." + run.evals.job) : "";
  if (run.evals.job === "failed") {
    const lines = run.evals.log.split("\n").filter(Boolean);
    evalStatus.textContent += ": " + (lines.filter(l => l.startsWith("error:")).pop() || lines.pop());
  }
  evalStatus.classList.toggle("error", run.evals.job === "failed");
  document.getElementById("eval-results").replaceChildren(...Object.entries(run.evals.results).map(([task, result]) =>
    el("div", {"data-eval": task}, el("h3", {}, `${t("eval.results")}: ${task}`),
      el("table", {class: "kv"}, el("tbody", {}, evalEntries(result || {})
        .map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)))))))));
  document.getElementById("btn-send").disabled = !run.has_model || run.status === "running" || run.stage === "cls";
}

function evalEntries(result) {
  // The model's metrics, then each baseline's as "baseline/metric" (sftlab eval's metrics.json layout).
  const rows = result.error ? [["error", result.error]] : [];  // a result file that could not be read
  rows.push(...Object.entries(result.metrics || {}).filter(([, v]) => typeof v !== "object"));
  for (const [name, metrics] of Object.entries(result.baselines || {})) {
    for (const [key, value] of Object.entries(metrics || {})) if (typeof value !== "object") rows.push([`${name}/${key}`, value]);
  }
  return rows;
}

function renderChat() {
  document.getElementById("chat-log").replaceChildren(...runPage.chat.map(m =>
    el("div", {class: `message ${m.role}`}, el("b", {}, m.role), " ", el("span", {}, m.content))));
}

async function sendChat() {
  const input = document.getElementById("chat-input");
  const errorBox = document.getElementById("chat-error");
  if (!input.value.trim()) return;
  errorBox.textContent = "";
  runPage.chat.push({role: "user", content: input.value});
  input.value = "";
  const history = runPage.chat.slice();
  const answer = {role: "assistant", content: ""};
  runPage.chat.push(answer);
  renderChat();
  const response = await fetch(`/api/runs/${encodeURIComponent(runPage.name)}/chat`, {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({messages: history, max_tokens: 32})});
  if (!response.ok) { errorBox.textContent = (await response.json()).error; runPage.chat.pop(); renderChat(); return; }
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, {stream: true});
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = JSON.parse(event.replace(/^data: /, ""));
      if (data.delta) answer.content += data.delta;
      if (data.error) errorBox.textContent = data.error;
      if (data.done) {
        document.getElementById("chat-template").textContent = data.done.template;
        document.getElementById("chat-log").dataset.finished = String(runPage.chat.length);
      }
      renderChat();
    }
  }
}

routes.compare = async arg => {
  const all = await api("/api/runs");
  const chosen = new Set((arg || "").split(",").filter(Boolean));
  document.getElementById("compare-pick").replaceChildren(...all.map(run => el("label", {class: "inline"},
    el("input", {type: "checkbox", value: run.name, ...(chosen.has(run.name) ? {checked: ""} : {}),
                 onchange: () => { location.hash = "#/compare/" + [...document.querySelectorAll("#compare-pick input:checked")].map(i => i.value).join(","); }}),
    run.name)));
  const rows = chosen.size ? await api(`/api/compare?runs=${encodeURIComponent([...chosen].join(","))}`) : [];
  const keys = [...new Set(rows.flatMap(r => Object.keys(r.final || {})))].filter(k => k !== "stopped");
  document.querySelector("#compare-table thead").replaceChildren(el("tr", {}, el("th", {}, t("col.name")),
    el("th", {}, t("col.status")), el("th", {}, t("col.strategy")), el("th", {}, t("col.trainable")), keys.map(k => el("th", {}, k))));
  document.querySelector("#compare-table tbody").replaceChildren(...rows.map(r => el("tr", {"data-run": r.name},
    el("td", {}, r.name), el("td", {}, statusBadge(r.status)), el("td", {}, r.strategy), el("td", {}, r.trainable || "-"),
    keys.map(k => el("td", {}, fmt((r.final || {})[k]))))));
  drawChart(document.getElementById("chart-compare"), rows.map(r => ({label: r.name, points: trainRows(r.rows).map(x => [x.step, x.loss])})));
  drawChart(document.getElementById("chart-compare-eval"), rows.map(r => ({label: r.name, points: evalRows(r.rows).map(x => [x.step, x.loss])})));
};

window.addEventListener("DOMContentLoaded", () => {
  document.getElementById("btn-stop").addEventListener("click", () => api(`/api/runs/${encodeURIComponent(runPage.name)}/stop`, {}).catch(e => showBanner(e.error)));
  document.getElementById("btn-resume").addEventListener("click", () => api(`/api/runs/${encodeURIComponent(runPage.name)}/resume`, {}).catch(e => showBanner(e.error)));
  document.getElementById("btn-eval").addEventListener("click", () => {
    const form = document.getElementById("eval-form");
    const body = Object.fromEntries([...form.querySelectorAll("[name]")].map(i => [i.name, i.value]));
    api(`/api/runs/${encodeURIComponent(runPage.name)}/eval`, body).then(refreshRun).catch(e => showBanner(e.error));
  });
  document.getElementById("btn-send").addEventListener("click", () => sendChat().catch(e => { document.getElementById("chat-error").textContent = String(e); }));
  document.getElementById("chat-input").addEventListener("keydown", e => { if (e.key === "Enter") document.getElementById("btn-send").click(); });
  document.getElementById("btn-chat-clear").addEventListener("click", () => { runPage.chat = []; renderChat(); });
  document.getElementById("btn-compare").addEventListener("click", () => {
    location.hash = "#/compare/" + [...document.querySelectorAll("#runs-table input:checked")].map(i => i.value).join(",");
  });
  window.addEventListener("sftlab-language", () => { if (runPage.detail && location.hash.startsWith("#/run/")) refreshRun(); });
});
