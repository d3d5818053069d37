// The stevedore status page. Everything shown comes from /status and is put on the page with
// textContent (never innerHTML), so no value can become markup.
"use strict";

const REFRESH_MS = 3000;
const control = document.body.dataset.control === "true";

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(typeof child === "string" || typeof child === "number" ? String(child) : child);
  }
  return node;
}

function seconds(from, to) {
  if (!from || !to) return null;
  return (Date.parse(to) - Date.parse(from)) / 1000;
}

function duration(s) {
  if (s === null || Number.isNaN(s)) return "?";
  if (s < 90) return s.toFixed(1) + " s";
  if (s < 5400) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}

function count(n) {
  return n === null || n === undefined ? "–" : Number(n).toLocaleString("en");
}

function field(label, value, cls) {
  return el("div", { class: "field" + (cls ? " " + cls : "") }, el("span", { class: "label" }, label), el("span", { class: "value" }, value));
}

function perSink(map) {
  const entries = Object.entries(map || {});
  if (entries.length === 0) return "–";
  return entries.map(([sink, n]) => sink + ": " + count(n)).join(", ");
}

function nextFire(next) {
  if (!next) return "after the running pass ends";
  if (next.local) return next.local + " (" + next.zone + ") · " + next.utc + " UTC";
  return next.utc + " UTC";
}

function strip(recent) {
  const box = el("div", { class: "strip", "aria-label": "last passes, newest first" });
  for (const pass of recent) {
    const took = seconds(pass.started_at, pass.finished_at);
    const label = pass.outcome + " · " + duration(took) + " · slot " + pass.slot + (pass.host ? " · " + pass.host : "");
    box.append(el("span", { class: "pass " + pass.outcome, title: label, "data-outcome": pass.outcome }, duration(took)));
  }
  if (recent.length === 0) box.append(el("span", { class: "none" }, "no pass yet"));
  return box;
}

function running(pass) {
  if (!pass) return null;
  return el("div", { class: "running" },
    el("h4", {}, "running: pass " + pass.pass + " (slot " + pass.slot + ", attempt " + pass.attempt + (pass.manual ? ", triggered" : "") + ")"),
    field("host / pid", (pass.host || "?") + " / " + (pass.pid || "?")),
    field("started", pass.started_at || "?"),
    field("run", pass.run || "–"),
    field("records read", count(pass.records_read), "live-read"),
    field("written", perSink(pass.written), "live-written"),
    field("dead-lettered", perSink(pass.dead_lettered), "live-dead"),
    pass.daemon_alive ? null : field("lease", "lapsed: another daemon will take it over", "warn"));
}

async function act(action, schedule) {
  const token = document.getElementById("token").value;
  sessionStorage.setItem("stevedore-token", token);
  let body = "{}";
  if (action === "pause") {
    const reason = window.prompt("Why pause " + schedule + "?") || "";
    body = JSON.stringify({ reason });
  }
  const result = document.getElementById("control-result");
  try {
    const response = await fetch("/control/" + action + "/" + encodeURIComponent(schedule), {
      method: "POST",
      headers: { "Authorization": "Bearer " + token, "Content-Type": "application/json" },
      body,
    });
    const text = await response.text();
    let message = text;
    try { message = JSON.parse(text).message; } catch (_) { /* plain text */ }
    result.textContent = message;
  } catch (error) {
    result.textContent = "request failed: " + error;
  }
  refresh();
}

function buttons(schedule) {
  if (!control) return null;
  const box = el("div", { class: "buttons" });
  for (const action of ["trigger", "pause", "resume"]) {
    const button = el("button", { type: "button", "data-action": action }, action);
    button.addEventListener("click", () => act(action, schedule.name));
    box.append(button);
  }
  return box;
}

function card(schedule) {
  const badges = el("span", { class: "badges" },
    schedule.gated ? el("span", { class: "badge gated" }, "gated") : null,
    schedule.paused ? el("span", { class: "badge paused" }, "paused") : null,
    schedule.mode !== "active" ? el("span", { class: "badge mode" }, schedule.mode) : null,
    schedule.consecutive_failures > 0 ? el("span", { class: "badge failing" }, schedule.consecutive_failures + " failed in a row") : null);
  return el("article", { class: "schedule", "data-schedule": schedule.name },
    el("h3", {}, schedule.name, " ", badges),
    field("job", schedule.job),
    field("timing", schedule.timing),
    field("next fire", nextFire(schedule.next_fire), "next-fire"),
    schedule.paused ? field("paused", (schedule.paused.reason || "no reason given") + " (by " + (schedule.paused.by || "?") + ")", "paused") : null,
    field("last", (schedule.last.outcome || "–") + (schedule.last.finished_at ? " at " + schedule.last.finished_at : "")),
    field("last success", schedule.last_success_at || "–"),
    field("failures in a row", count(schedule.consecutive_failures), "failures"),
    field("missed / skipped slots", count(schedule.missed) + " / " + count(schedule.skipped)),
    field("dead letters", perSink(schedule.dead_letters), "dead-letters"),
    running(schedule.running),
    el("h4", {}, "last " + schedule.recent.length + " passes"),
    strip(schedule.recent),
    buttons(schedule));
}

function render(status) {
  document.getElementById("group").textContent = status.group;
  document.getElementById("summary").textContent =
    "environment " + status.environment + " · redis " + status.redis + " · as of " + status.now;
  const readOnly = document.getElementById("read-only");
  readOnly.hidden = !status.read_only;
  readOnly.textContent = status.read_only ? "read-only: " + status.read_only : "";
  document.getElementById("schedules").replaceChildren(...status.schedules.map(card));
  const rows = status.daemons.map((d) => el("tr", { class: d.alive ? "alive" : "gone" },
    el("td", {}, d.id), el("td", {}, d.host), el("td", {}, d.pid), el("td", {}, d.environment),
    el("td", {}, d.started_at), el("td", {}, d.last_heartbeat), el("td", {}, d.alive ? "yes" : "no")));
  document.querySelector("#daemons tbody").replaceChildren(...rows);
}

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const response = await fetch("/status", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status + ": " + (await response.text()));
    render(await response.json());
    problem.hidden = true;
    document.body.dataset.loaded = "true";
  } catch (error) {
    problem.hidden = false;
    problem.textContent = "cannot read /status: " + error.message;
  }
}

if (control) {
  document.getElementById("token-box").hidden = false;
  document.getElementById("token").value = sessionStorage.getItem("stevedore-token") || "";
}
refresh();
setInterval(refresh, REFRESH_MS);
