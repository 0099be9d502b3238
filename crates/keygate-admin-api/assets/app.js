// keygate console: a small client of the admin API. No framework, no build step.
// Signed in with a session cookie (HttpOnly); changes carry the CSRF token.
"use strict";

const $ = (sel) => document.querySelector(sel);
let csrf = sessionStorage.getItem("kg_csrf") || "";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "on") { for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn); }
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function status(text, isError) {
  const s = $("#status");
  s.textContent = text || "";
  s.className = isError ? "error" : "";
}

async function api(method, path, body) {
  const headers = { "content-type": "application/json" };
  if (method !== "GET") headers["x-csrf-token"] = csrf;
  const res = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined, credentials: "same-origin" });
  const data = await res.json().catch(() => ({}));
  if (res.status === 401) { showSignIn(); throw new Error("signed out"); }
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

const credits = (micros) => (Number(micros) / 1e6).toFixed(6).replace(/\.?0+$/, "");

function table(headers, rows) {
  const head = el("tr", {}, ...headers.map((h) => el("th", { scope: "col", class: h.num ? "num" : null }, h.label || h)));
  return el("table", {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function field(label, input) { return el("label", {}, label, input); }

function showSecret(title, secret) {
  const input = el("input", { readonly: "", value: secret, id: "new-secret", "aria-label": title });
  const copy = el("button", { type: "button", id: "copy-secret", on: { click: async () => {
    input.select();
    try { await navigator.clipboard.writeText(secret); status("Copied."); } catch (e) { document.execCommand("copy"); status("Copied."); }
  } } }, "Copy");
  const box = el("div", { class: "secret", role: "alert" },
    el("p", { class: "warning" }, "Copy this key now. It cannot be shown again: keygate stores only its hash."),
    el("p", {}, title), input, " ", copy);
  $("#view").prepend(box);
  input.focus();
  input.select();
}

async function accountsView() {
  const { accounts } = await api("GET", "/api/accounts?limit=500");
  const rows = accounts.map((a) => el("tr", {}, el("td", {}, a.name), el("td", {}, a.id),
    el("td", { class: "num" }, credits(a.balance_micros)), el("td", { class: "num" }, credits(a.reserved_micros))));
  const name = el("input", { id: "account-name", required: "" });
  const balance = el("input", { id: "account-balance", value: "0", inputmode: "decimal" });
  const create = el("form", { class: "row", id: "create-account", on: { submit: async (e) => {
    e.preventDefault();
    await run(async () => {
      await api("POST", "/api/accounts", { name: name.value, balance: balance.value });
      await show("accounts");
      status("Account created.");
    });
  } } }, field("Name", name), field("Opening balance (credits)", balance), el("button", { type: "submit" }, "Create account"));
  const which = el("select", { id: "topup-account" }, ...accounts.map((a) => el("option", { value: a.id }, `${a.name} (${a.id})`)));
  const amount = el("input", { id: "topup-amount", inputmode: "decimal", required: "" });
  const topUp = el("form", { class: "row", id: "top-up", on: { submit: async (e) => {
    e.preventDefault();
    await run(async () => {
      await api("POST", `/api/accounts/${encodeURIComponent(which.value)}/top-up`, { amount: amount.value });
      await show("accounts");
      status("Topped up.");
    });
  } } }, field("Account", which), field("Amount (credits)", amount), el("button", { type: "submit" }, "Top up"));
  return [el("h2", {}, "Accounts"), table(["Name", "Id", { label: "Balance", num: 1 }, { label: "Reserved", num: 1 }], rows), create, topUp];
}

async function keysView() {
  const [{ keys }, { accounts }] = await Promise.all([api("GET", "/api/keys?limit=500"), api("GET", "/api/accounts?limit=500")]);
  const rows = keys.map((k) => el("tr", {}, el("td", {}, k.name || "-"), el("td", {}, k.id), el("td", {}, `${k.start}…`),
    el("td", {}, k.status), el("td", {}, k.scopes.join(",")), el("td", {}, k.expires_at || "never"),
    el("td", {},
      el("button", { type: "button", class: "revoke", "data-id": k.id, disabled: k.status === "revoked" ? "" : null, on: { click: () => revoke(k) } }, "Revoke"), " ",
      el("button", { type: "button", class: "rotate", "data-id": k.id, disabled: k.status === "active" ? null : "", on: { click: () => rotate(k) } }, "Rotate"))));
  const account = el("select", { id: "key-account" }, ...accounts.map((a) => el("option", { value: a.id }, `${a.name} (${a.id})`)));
  const name = el("input", { id: "key-name" });
  const scopes = el("input", { id: "key-scopes", value: "chat,models,usage" });
  const models = el("input", { id: "key-models", placeholder: "all" });
  const expires = el("input", { id: "key-expires", placeholder: "never, or 30d" });
  const rpm = el("input", { id: "key-rpm", inputmode: "numeric" });
  const list = (v) => v.split(",").map((s) => s.trim()).filter(Boolean);
  const create = el("form", { class: "row", id: "create-key", on: { submit: async (e) => {
    e.preventDefault();
    await run(async () => {
      const body = { account: account.value, name: name.value, scopes: list(scopes.value), models: list(models.value) };
      if (expires.value.trim()) body.expires_in = expires.value.trim();
      if (rpm.value.trim()) body.rpm = Number(rpm.value);
      const made = await api("POST", "/api/keys", body);
      await show("keys");
      showSecret(`New key ${made.id}`, made.key);
    });
  } } }, field("Account", account), field("Name", name), field("Scopes", scopes), field("Models", models),
    field("Expires in", expires), field("Requests/min", rpm), el("button", { type: "submit" }, "Create key"));
  return [el("h2", {}, "Keys"), create, table(["Name", "Id", "Start", "Status", "Scopes", "Expires", "Actions"], rows)];
}

async function revoke(k) {
  if (!confirm(`Revoke key ${k.name || k.id}? Requests with it stop within a second.`)) return;
  await run(async () => {
    await api("POST", `/api/keys/${encodeURIComponent(k.id)}/revoke`);
    await show("keys");
    status(`Key ${k.id} revoked.`);
  });
}

async function rotate(k) {
  const grace = prompt(`Rotate key ${k.name || k.id}: keep the old key working for (e.g. 24h; empty: stop it now)`, "");
  if (grace === null) return;
  await run(async () => {
    const made = await api("POST", `/api/keys/${encodeURIComponent(k.id)}/rotate`, grace.trim() ? { grace: grace.trim() } : {});
    await show("keys");
    showSecret(`New key ${made.id} (replaces ${k.id})`, made.key);
  });
}

// One bar per UTC day of the window, days without usage included.
function days(rows, count) {
  const byDay = new Map(rows.map((r) => [r.group, r]));
  const out = [];
  for (let i = count - 1; i >= 0; i--) {
    const day = new Date(Date.now() - i * 86400000).toISOString().slice(0, 10);
    out.push(byDay.get(day) || { group: day, cost_micros: 0, input_tokens: 0, output_tokens: 0 });
  }
  return out;
}

function chart(rows) {
  const w = 640, h = 180, pad = 24;
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "chart");
  svg.setAttribute("id", "usage-chart");
  svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "Cost per day");
  const max = Math.max(1, ...rows.map((r) => r.cost_micros));
  const bw = rows.length ? (w - 2 * pad) / rows.length : 0;
  const labelEvery = Math.max(1, Math.ceil(rows.length / 10));
  rows.forEach((r, i) => {
    const x = pad + i * bw + 2;
    if (i % labelEvery === 0) svg.append(dayLabel(svg, r, x, h));
    if (!r.cost_micros) return;
    const bh = Math.max(1, (h - 2 * pad) * (r.cost_micros / max));
    const rect = document.createElementNS(svg.namespaceURI, "rect");
    rect.setAttribute("x", x);
    rect.setAttribute("y", h - pad - bh);
    rect.setAttribute("width", Math.max(1, bw - 4));
    rect.setAttribute("height", bh);
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `${r.group}: ${credits(r.cost_micros)} credits, ${r.input_tokens + r.output_tokens} tokens`;
    rect.append(title);
    svg.append(rect);
  });
  return svg;
}

function dayLabel(svg, r, x, h) {
  const label = document.createElementNS(svg.namespaceURI, "text");
  label.setAttribute("x", x);
  label.setAttribute("y", h - 6);
  label.textContent = r.group.slice(5);
  return label;
}

let usageWindow = "7d";
async function usageView() {
  const q = (g) => api("GET", `/api/usage?since=${usageWindow}&group_by=${g}`);
  const [byDay, byModel, byKey] = await Promise.all([q("day"), q("model"), q("key")]);
  const win = el("select", { id: "usage-window", on: { change: async (e) => { usageWindow = e.target.value; await show("usage"); } } },
    ...["1d", "7d", "30d", "90d"].map((v) => el("option", { value: v, selected: v === usageWindow ? "" : null }, `last ${v}`)));
  const rowsOf = (report) => report.rows.map((r) => el("tr", {}, el("td", {}, r.group), el("td", { class: "num" }, r.requests),
    el("td", { class: "num" }, r.input_tokens), el("td", { class: "num" }, r.output_tokens), el("td", { class: "num" }, credits(r.cost_micros))));
  const cols = (first) => [first, { label: "Requests", num: 1 }, { label: "Input tokens", num: 1 }, { label: "Output tokens", num: 1 }, { label: "Cost", num: 1 }];
  return [el("h2", {}, "Usage"), field("Window", win), el("h3", {}, "Cost per day"), chart(days(byDay.rows, parseInt(usageWindow, 10))),
    el("h3", {}, "By model"), table(cols("Model"), rowsOf(byModel)), el("h3", {}, "By key"), table(cols("Key"), rowsOf(byKey))];
}

async function auditView() {
  const { entries } = await api("GET", "/api/audit?limit=200");
  const rows = entries.map((e) => el("tr", {}, el("td", {}, e.at), el("td", {}, e.actor), el("td", {}, e.action), el("td", {}, e.target || "-")));
  return [el("h2", {}, "Audit log"), table(["When", "Actor", "Action", "Target"], rows)];
}

const views = { accounts: accountsView, keys: keysView, usage: usageView, audit: auditView };

async function show(name) {
  const parts = await views[name]();
  $("#view").replaceChildren(...parts);
  for (const b of document.querySelectorAll("nav button[data-view]")) {
    if (b.dataset.view === name) b.setAttribute("aria-current", "page"); else b.removeAttribute("aria-current");
  }
  location.hash = name;
}

async function run(fn) {
  try { status(""); await fn(); } catch (e) { if (e.message !== "signed out") status(e.message, true); }
}

function showSignIn() {
  $("#nav").hidden = true;
  $("#view").replaceChildren();
  $("#signin").hidden = false;
  $("#token").focus();
}

async function signedIn() {
  $("#signin").hidden = true;
  $("#nav").hidden = false;
  const name = (location.hash || "#accounts").slice(1);
  await run(() => show(views[name] ? name : "accounts"));
}

document.addEventListener("DOMContentLoaded", async () => {
  $("#signin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const res = await fetch("/console/session", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ token: $("#token").value }), credentials: "same-origin" });
    const data = await res.json().catch(() => ({}));
    $("#token").value = "";
    if (!res.ok) { status((data.error && data.error.message) || "Sign-in failed", true); return; }
    csrf = data.csrf;
    sessionStorage.setItem("kg_csrf", csrf);
    status(`Signed in as ${data.name} (${data.role}).`);
    await signedIn();
  });
  for (const b of document.querySelectorAll("nav button[data-view]")) b.addEventListener("click", () => run(() => show(b.dataset.view)));
  $("#signout").addEventListener("click", async () => {
    await fetch("/console/session", { method: "DELETE", headers: { "x-csrf-token": csrf }, credentials: "same-origin" });
    sessionStorage.removeItem("kg_csrf");
    csrf = "";
    showSignIn();
  });
  const me = await fetch("/console/session", { credentials: "same-origin" });
  if (me.ok && csrf) await signedIn(); else showSignIn();
});
