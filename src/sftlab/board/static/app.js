// sftlab board core: language strings, JSON calls with the CLI's error messages, the hash router.
"use strict";
const board = {strings: {}, lang: localStorage.getItem("sftlab.lang") || "en", options: null, timer: null};

function t(key) { return board.strings[key] || key; }

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v; else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  children.flat().forEach(c => node.append(c instanceof Node ? c : document.createTextNode(String(c))));
  return node;
}

function fmt(value) {
  if (value === null || value === undefined) return "-";
  return typeof value === "number" ? niceNumber(value) : String(value);
}

async function api(path, body, method) {
  const init = body === undefined ? {method: method || "GET"} :
    {method: method || "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  let response;
  try { response = await fetch(path, init); } catch (e) { throw {error: t("error.network"), field: "_form"}; }
  const data = await response.json().catch(() => ({error: response.statusText, field: "_form"}));
  if (!response.ok) throw data;
  return data;
}

async function setLanguage(lang) {
  board.lang = lang;
  localStorage.setItem("sftlab.lang", lang);
  board.strings = await api(`/api/i18n/${lang}`);
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach(node => { node.textContent = t(node.dataset.i18n); });
  document.querySelectorAll("[data-i18n-placeholder]").forEach(node => { node.placeholder = t(node.dataset.i18nPlaceholder); });
  document.querySelectorAll("[data-status]").forEach(node => { node.textContent = statusLabel(node.dataset.status); });
  document.title = t("app.title");
  window.dispatchEvent(new Event("sftlab-language"));
}

function fillOptions(options) {
  document.querySelectorAll("select[data-options]").forEach(select => {
    const values = options[select.dataset.options] || [];
    const blank = select.closest("#new-form") ? [el("option", {value: "", "data-i18n": "form.default"}, t("form.default"))] : [];
    select.replaceChildren(...blank, ...values.map(v => el("option", {value: v}, v)));
  });
  document.getElementById("model-list").replaceChildren(
    ...options.embedded.map(name => el("option", {value: name})),
    ...options.models.map(m => el("option", {value: m.path}, `${m.name} (${m.architecture})`)));
  document.getElementById("data-list").replaceChildren(...options.data_files.map(f => el("option", {value: f})));
}

function statusLabel(status) { return board.strings["status." + status] || status; }  // e.g. early_stopping as is

function statusBadge(status) {
  return el("span", {class: `badge ${status}`, "data-status": status}, statusLabel(status));
}

function showBanner(message) {
  const banner = document.getElementById("form-error");
  banner.textContent = message || "";
  banner.hidden = !message;
}

const routes = {};  // page name -> function(argument) that shows it

function route() {
  clearInterval(board.timer);
  showBanner("");
  const [page, arg] = (location.hash.replace(/^#\//, "") || "new").split("/");
  const name = routes[page] ? page : "new";
  document.querySelectorAll(".page").forEach(section => { section.hidden = section.id !== `page-${name}`; });
  document.querySelectorAll("nav a").forEach(a => a.classList.toggle("active", a.getAttribute("href") === `#/${name}`));
  routes[name](arg ? decodeURIComponent(arg) : undefined);
}

async function startBoard() {
  document.getElementById("lang-toggle").addEventListener("click", () => setLanguage(board.lang === "en" ? "zh" : "en"));
  await setLanguage(board.lang);
  board.options = await api("/api/options");
  fillOptions(board.options);
  window.addEventListener("hashchange", route);
  route();
  document.body.dataset.ready = "1";
}

window.addEventListener("DOMContentLoaded", () => startBoard().catch(e => showBanner(e.error || String(e))));
