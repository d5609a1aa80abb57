// Policy push: the held-out metrics table against the baselines, one enterprise's pushes and reasons, the model behind them.
"use strict";

function metricsTable(results) {
  // Groups are the per-scorer objects (overall, cold, active); the columns those of `sftlab policy evaluate`'s table.
  const first = Object.values(results)[0] || {};
  const groups = Object.keys(first).filter(g => first[g] && typeof first[g] === "object");
  const keys = [...new Set(groups.flatMap(g => Object.keys(first[g])))];
  const ranked = keys.filter(k => k.endsWith("@5"));
  const columns = ["precision", "recall", "f1", "auc"].filter(k => keys.includes(k))
    .concat(ranked.length ? ranked : keys.filter(k => k.includes("@")));
  document.querySelector("#policy-metrics thead").replaceChildren(el("tr", {}, el("th", {}, t("col.scorer")),
    el("th", {}, t("col.group")), el("th", {}, t("col.candidates")), columns.map(c => el("th", {}, c))));
  document.querySelector("#policy-metrics tbody").replaceChildren(...Object.entries(results).flatMap(([scorer, result]) =>
    groups.map(group => el("tr", {class: scorer === "fine_tuned" ? "highlight" : ""}, el("td", {}, scorer), el("td", {}, group),
      el("td", {}, fmt(result[group].candidates)), columns.map(c => el("td", {}, fmt(result[group][c])))))));
}

async function showEnterprise(id) {
  const data = await api(`/api/policy/${encodeURIComponent(id)}`);
  document.querySelector("#policy-pushes tbody").replaceChildren(...data.pushes.map(p => el("tr", {},
    el("td", {}, p.window_key), el("td", {}, p.rank), el("td", {}, `${p.title} (${p.policy_id})`), el("td", {}, p.category),
    el("td", {}, fmt(p.score)), el("td", {}, p.reason))));
  document.getElementById("policy-models").replaceChildren(...Object.entries(data.models).map(([version, model]) =>
    el("div", {}, el("code", {}, version), el("pre", {}, model.strategy || "-"))));
}

routes.policy = async () => {
  let data;
  try { data = await api("/api/policy"); } catch (e) { showBanner(e.error); return; }
  document.getElementById("policy-db").textContent = data.db;
  document.getElementById("policy-no-report").hidden = Boolean(data.results);
  if (data.results) metricsTable(data.results);
  document.getElementById("policy-no-pushes").hidden = data.enterprises.length > 0;
  const select = document.getElementById("policy-enterprise");
  select.replaceChildren(...data.enterprises.map(e => el("option", {value: e.id}, `${e.id} ${e.name} (${e.pushes})`)));
  select.onchange = () => showEnterprise(select.value).catch(e => showBanner(e.error));
  if (data.enterprises.length) await showEnterprise(data.enterprises[0].id);
};
