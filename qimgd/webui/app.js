// The Software Upgrade page. It uses only the agent's REST API (the same calls
// `qq` makes), holds no state the API does not have (a reload shows the truth),
// and, when the node serving it stops answering (it reboots in a rolling
// upgrade), moves itself to another node of the cluster.
"use strict";

const POLL_MS = 1000; // how often the page reads the state
const CALL_LIMIT_MS = 5000; // every API call ends within this
const LOST_AFTER = 2; // failed polls before the node counts as gone
const FAILOVER_LIMIT_MS = 10 * 60 * 1000; // how long the page looks for another node
const TOKEN = "qimg.token";
const USER_NAME = "qimg.user";
const NODES = "qimg.nodes";

const $ = (id) => document.getElementById(id);
const show = (el, on) => { el.hidden = !on; };
const say = (id, text) => { const el = $(id); el.textContent = text || ""; show(el, !!text); };

let token = sessionStorage.getItem(TOKEN);
let timer = null;
let failures = 0;
let lostSince = null;
let verified = null; // the verify-image answer behind the open dialog
let protection = null;
let current = null;

// One API call: JSON in and out, a time limit, the token. Resolves to
// {status, body}; rejects only when the node did not answer.
async function api(method, path, body) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), CALL_LIMIT_MS);
  try {
    const headers = { "Accept": "application/json" };
    if (token) headers["Authorization"] = "Bearer " + token;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method, headers, signal: ctl.signal, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let json = null;
    try { json = await r.json(); } catch (_) { json = null; }
    if (r.status === 401 && path !== "/v1/session/login") {
      loggedOut("Your session ended (the token expired or was refused): log in again.");
    }
    return { status: r.status, body: json };
  } finally {
    clearTimeout(t);
  }
}

// What an error answer says, in words.
function why(r) {
  if (r.body && r.body.description) return r.body.description;
  return "the node answered HTTP " + r.status;
}

function localTime(unixSeconds) {
  return new Date(unixSeconds * 1000).toLocaleString();
}

// Unix times in a message ("until 1767225600 Unix time") in the browser's zone.
function localTimes(text) {
  return (text || "").replace(/until (\d{9,}) Unix time/g, (_, s) => "until " + localTime(Number(s)));
}

// ---- log in and out ----

function loggedOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN);
  if (timer) { clearTimeout(timer); timer = null; }
  show($("upgrade"), false);
  show($("logout"), false);
  $("who").textContent = "";
  show($("login"), true);
  say("login-error", message);
  $("user").focus();
}

async function logIn(ev) {
  ev.preventDefault();
  const username = $("user").value.trim();
  const password = $("password").value;
  if (!username || !password) { say("login-error", "Enter a user name and a password."); return; }
  $("login-button").disabled = true;
  try {
    const r = await api("POST", "/v1/session/login", { username, password });
    if (r.status === 200 && r.body && r.body.bearer_token) {
      token = r.body.bearer_token;
      sessionStorage.setItem(TOKEN, token);
      sessionStorage.setItem(USER_NAME, username);
      $("password").value = "";
      say("login-error", "");
      started();
    } else if (r.status === 401) {
      say("login-error", "Wrong user name or password.");
    } else {
      say("login-error", "The node refused the login: " + why(r));
    }
  } catch (_) {
    say("login-error", "The node did not answer; try again.");
  } finally {
    $("login-button").disabled = false;
  }
}

function started() {
  show($("login"), false);
  show($("upgrade"), true);
  show($("logout"), true);
  const user = sessionStorage.getItem(USER_NAME);
  $("who").textContent = user ? "Logged in as " + user : "";
  $("served-by").textContent = "(page served by " + location.host + ")";
  poll();
}

// ---- reading the state ----

async function poll() {
  if (timer) { clearTimeout(timer); timer = null; }
  if (!token) return;
  try {
    await refresh();
    failures = 0;
    lostSince = null;
    say("connection", "");
  } catch (_) {
    failures += 1;
    if (failures >= LOST_AFTER && !(await failover())) return; // gave up
    if (!token) return;
  }
  timer = setTimeout(poll, POLL_MS);
}

// One request for everything the page shows (`/v1/qimg/overview`).
async function refresh() {
  const r = await api("GET", "/v1/qimg/overview");
  if (!token) return;
  if (r.status !== 200 || !r.body) throw new Error("no overview");
  const o = r.body;
  protection = o.protection;
  current = o.version ? o.version.build_id : null;
  const known = (o.nodes || []).filter((n) => n.api_address).map((n) => ({ name: n.node_name, address: n.api_address }));
  if (known.length) sessionStorage.setItem(NODES, JSON.stringify(known));
  const v = view(o);
  rollbackTo = v.rollbackTo;
  rollbackPlatform = !!(o.plan && o.plan.mode === "platform" && (o.nodes || []).length > 1);
  paint(v);
  $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
}

// ---- what to show (pure: an overview in, a description of the page out) ----

// Qumulo's upgrade states, in the page's words. The names are the contract's
// (`qapi::types::UpgradeState`), written here once.
const STATE = {
  UPGRADE_STATE_IDLE: "idle",
  UPGRADE_STATE_PREPARING: "preparing",
  UPGRADE_STATE_PREPARED: "prepared",
  UPGRADE_STATE_COMMITTING: "committing",
  UPGRADE_STATE_REBOOTING: "rebooting",
  UPGRADE_STATE_COMMITTED: "committed",
};

// A node's row: its name, whether it answers, what it runs, its part in the
// current upgrade.
function nodeView(n, p) {
  const online = n.node_status === "online";
  let step = "—";
  if (p) {
    if (p.error) step = "failed: " + p.error;
    else if (p.step === "preparing") step = "preparing " + p.progress + " %";
    else if (p.step) step = p.step.replace(/_/g, " ");
  }
  return {
    name: n.node_name,
    status: online ? "online" : "offline (rebooting or down)",
    statusBad: !online,
    version: n.software_version || "—",
    slot: n.boot_slot ? n.boot_slot.toUpperCase() : "—",
    step,
    stepBad: !!(p && p.error),
  };
}

// The progress bar of a reboot: nodes done of all, or indeterminate.
function rebootBar(reboot) {
  return reboot && reboot.total_node_count
    ? { max: reboot.total_node_count, value: reboot.rebooted_node_count }
    : null;
}

function rebootText(reboot, plan) {
  if (!reboot) return "";
  let t = "Rebooted " + reboot.rebooted_node_count + " of " + reboot.total_node_count + " nodes";
  if (plan && plan.rolling && plan.batches.length) {
    const batch = plan.batches[plan.batch] || [];
    const names = batch.map((id) => (plan.nodes.find((n) => n.id === id) || { name: "node " + id }).name);
    t += "; batch " + (plan.batch + 1) + " of " + plan.batches.length + ": " + names.join(", ");
  }
  if (reboot.state === "REBOOT_PAUSED") t += " (paused)";
  return t + ".";
}

// A duration in words: "6.7 s", "4 min 5 s", "1 h 2 min".
function took(ms) {
  const s = Math.floor(ms / 1000);
  if (s < 60) return (ms / 1000).toFixed(1) + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + (Math.floor(s / 60) % 60) + " min";
}

const RESULT = { upgraded: "upgraded", rolled_back: "rolled back", failed: "failed" };

// A row of the history: one upgrade (`qapi::history::UpgradeRecord`).
function historyView(r, nowMs) {
  const startedMs = r.started ? r.started.at_ms : (r.phases.length ? r.phases[0].at_ms : 0);
  const mode = r.mode === "instant" ? "instant" : (r.rolling ? "platform, rolling" : "platform, all at once");
  let result = r.result ? RESULT[r.result] || r.result : "under way";
  if (r.reason) result += ": " + r.reason;
  return {
    id: "#" + r.generation,
    started: localTime(startedMs / 1000),
    by: r.started && r.started.by ? r.started.by + " from " + r.started.from : "—",
    versions: (r.from_version || "?") + " → " + r.to_version,
    mode,
    result,
    // A rollback the operator asked for is not a failure.
    resultBad: !!r.result && r.result !== "upgraded" && !(r.rollback && r.result === "rolled_back"),
    took: took((r.ended_ms || nowMs) - startedMs),
  };
}

// Everything the page shows for overview `o`, decided here and only here.
function view(o, nowMs) {
  if (nowMs === undefined) nowMs = Date.now();
  const status = o.status, blocked = o.blocked, plan = o.plan, reboot = o.reboot, restriper = o.restriper;
  const state = STATE[status.state] || status.state;
  const busy = ["preparing", "prepared", "committing", "rebooting"].includes(state);
  const rollingBack = !!(plan && plan.phase === "rolling_back");
  const fin = (plan && plan.finality) || {};
  const asked = !!fin.rollback; // the operator rolls it back
  const failed = !!(plan && (plan.phase === "failed" || plan.phase === "discarding"));
  const pausedOnError = !!(reboot && reboot.state === "REBOOT_PAUSED_DUE_TO_ERROR");
  const v = {
    current: o.version ? o.version.build_id : null,
    nodes: (o.nodes || []).map((n) => nodeView(n, plan && plan.nodes.find((x) => x.id === n.id))),
    blocked: blocked && blocked.is_blocked && !busy && !rollingBack
      ? "Upgrades are blocked: " + localTimes(blocked.blocked_reason) : "",
    problem: "",
    success: "",
    startForm: !busy && !rollingBack,
    upgradeDisabled: !!(blocked && blocked.is_blocked),
    progress: null, // {title, text, bar: {max, value} | null (indeterminate)}
    restriper: "",
    commit: false,
    pause: false,
    resume: false,
    history: (o.history ? o.history.upgrades : []).map((r) => historyView(r, nowMs)),
    eta: plan && plan.eta ? "About " + took(plan.eta.remaining_ms) + " left." : "",
    finality: "", // the finalize and rollback buttons' text; empty: hidden
    rollbackTo: null,
  };
  if (pausedOnError) {
    v.problem = "The reboots are paused on an error: " + (reboot.error_message || status.error_info || "unknown") +
      ". Fix the cause, then resume.";
  } else if (rollingBack && !asked) {
    v.problem = "The upgrade failed and the cluster is rolling back to the previous release: " + (status.error_info || "");
  } else if (failed && asked) {
    v.problem = "The rollback did not complete: " + (status.error_info || "unknown");
  } else if (failed && status.error_info) {
    v.problem = "The upgrade failed; every node is back on the release it ran before: " + status.error_info;
  } else if (status.error_info && state === "idle") {
    v.problem = "The last upgrade did not complete: " + status.error_info;
  }
  // A finished upgrade is idle again (Qumulo's lifecycle); the plan keeps it.
  if (!busy && plan && plan.phase === "committed") {
    const from = plan.from_version ? "from " + plan.from_version + " " : "";
    v.success = "You have successfully upgraded " + from + "to " + plan.target_version + ".";
    if (plan.downtime_ms != null) v.success += " Cluster downtime: " + plan.downtime_ms + " ms.";
    if (fin.finalizable) {
      // The next upgrade waits for the finalize: the box says it, not a banner.
      v.blocked = "";
      v.rollbackTo = plan.from_version || "the previous release";
      v.finality = "Until you finalize it, the cluster can be rolled back to " + v.rollbackTo +
        "; a new upgrade can start once it is finalized" +
        (fin.auto_finalize_at_ms ? " (it finalizes by itself at " + localTime(fin.auto_finalize_at_ms / 1000) + ")" : "") + ".";
    } else if (fin.finalized) {
      v.success += " Finalized by " + fin.finalized.by + ".";
    }
  }
  if (!busy && plan && plan.phase === "rolled_back") {
    v.success = "The cluster was rolled back to " + (plan.from_version || "its previous release") +
      (fin.rollback ? " (asked by " + fin.rollback.by + ")." : ".");
  }
  if (!(busy || rollingBack)) return v;
  const platform = plan ? plan.mode === "platform" : state === "rebooting";
  if (rollingBack && !platform) {
    v.progress = { title: "Rolling back", text: "Restarting the previous container on every node.", bar: null };
  } else if (rollingBack) {
    v.progress = { title: "Rolling back", text: rebootText(reboot, plan), bar: rebootBar(reboot) };
  } else if (state === "preparing") {
    const pct = status.progress || 0;
    v.progress = {
      title: "Preparing the upgrade",
      text: "Verifying the upgrade file and writing the new release on every node: " + pct + " %",
      bar: { max: 100, value: pct },
    };
  } else if (state === "prepared") {
    const auto = !!(status.settings && status.settings.auto_commit);
    v.progress = {
      title: "Prepared",
      text: "Every node is prepared" + (auto ? "; committing now." : ". Commit to finish the upgrade."),
      bar: { max: 100, value: 100 },
    };
    v.commit = !auto;
  } else if (!platform) {
    v.progress = { title: "Committing", text: "Restarting the container on every node with the new release.", bar: null };
  } else {
    v.progress = {
      title: plan && plan.rolling ? "Rolling reboot" : "Complete reboot",
      text: rebootText(reboot, plan),
      bar: rebootBar(reboot),
    };
  }
  if (plan && plan.soaking) {
    const canaries = (plan.batches[0] || []).map((id) => (plan.nodes.find((n) => n.id === id) || { name: "node " + id }).name);
    v.progress.text = "The canaries (" + canaries.join(", ") + ") run " + plan.target_version + "; the rollout goes on " +
      (plan.soak_until_ms ? "at " + localTime(plan.soak_until_ms / 1000) + " or when you resume it." : "when you resume it.");
  }
  if (plan && plan.restriping && restriper) {
    v.restriper = "Waiting for the data to be safe before the next nodes reboot: the restriper is " +
      restriper.percent_complete + " % done" + (restriper.data_at_risk ? " (data at risk until it finishes)." : ".");
  } else if (plan && plan.restriping && plan.data_safety_wait) {
    // The restriper cannot be read here: the coordinator's probe says why.
    v.restriper = "Waiting for the data to be safe before the next nodes reboot: " + plan.data_safety_wait + ".";
  }
  const rollingReboot = !!(reboot && reboot.rolling && (platform || rollingBack));
  v.pause = rollingReboot && reboot.state === "REBOOT_IN_PROGRESS";
  v.resume = rollingReboot && (reboot.state === "REBOOT_PAUSED" || pausedOnError);
  return v;
}
window.qimgView = view; // for the tests, which check it case by case in the browser

// What the dialog shows of an assessment (`qapi::assess::Assessment`): a
// summary, the checks that warn or fail (failures first), and the names a
// start must override.
function assessView(a) {
  const named = (c) => c.name.replace(/_/g, " ") + (c.node != null ? " (node " + c.node + ")" : "") + ": " + c.message;
  const fails = a.checks.filter((c) => c.result === "fail");
  const warns = a.checks.filter((c) => c.result === "warn");
  const passes = a.checks.length - fails.length - warns.length;
  let summary = passes + " of " + a.checks.length + " checks pass on every node and the cluster";
  if (fails.length) summary += "; " + fails.length + " fail: the upgrade starts only if you override them";
  else if (warns.length) summary += "; look at the warnings";
  else summary += ".";
  return {
    summary,
    items: fails.map((c) => ({ text: named(c), bad: true })).concat(warns.map((c) => ({ text: named(c), bad: false }))),
    failing: [...new Set(fails.map((c) => c.name))],
  };
}
window.qimgAssessView = assessView;

// ---- painting it ----

// A table row: a header cell, then [text, bad] cells.
function tableRow(head, cells) {
  const tr = document.createElement("tr");
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = head;
  tr.appendChild(th);
  for (const [text, bad] of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    if (bad) td.className = "bad";
    tr.appendChild(td);
  }
  return tr;
}

const nodeRow = (n) => tableRow(n.name, [[n.status, n.statusBad], [n.version], [n.slot], [n.step, n.stepBad]]);
const historyRow = (h) =>
  tableRow(h.id, [[h.started], [h.by], [h.versions], [h.mode], [h.result, h.resultBad], [h.took]]);

function paint(v) {
  $("current-version").textContent = v.current || "unknown";
  $("history").tBodies[0].replaceChildren(...v.history.map(historyRow));
  show($("history-empty"), !v.history.length);
  show($("history"), !!v.history.length);
  $("nodes").tBodies[0].replaceChildren(...v.nodes.map(nodeRow));
  say("blocked", v.blocked);
  say("problem", v.problem);
  say("success", v.success);
  show($("start-form"), v.startForm);
  $("upgrade-button").disabled = v.upgradeDisabled;
  show($("progress"), !!v.progress);
  if (v.progress) {
    $("phase-title").textContent = v.progress.title;
    $("phase-text").textContent = v.progress.text;
    const bar = $("cluster-progress");
    if (v.progress.bar) {
      bar.max = v.progress.bar.max;
      bar.value = v.progress.bar.value;
    } else {
      bar.removeAttribute("value");
    }
  }
  say("restriper", v.restriper);
  say("phase-eta", v.eta);
  say("finality-text", v.finality);
  show($("finality"), !!v.finality);
  show($("commit"), v.commit);
  show($("pause"), v.pause);
  show($("resume"), v.resume);
}

// ---- when this node stops answering ----

async function reachable(address) {
  const ctl = new AbortController();
  const t = setTimeout(() => ctl.abort(), 2000);
  try {
    // An opaque answer is enough: the node is up and serving.
    await fetch("https://" + address + "/v1/version", { mode: "no-cors", signal: ctl.signal, cache: "no-store" });
    return true;
  } catch (_) {
    return false;
  } finally {
    clearTimeout(t);
  }
}

// Looks for another node; false once it gave up (the page then stops polling).
async function failover() {
  if (!lostSince) lostSince = Date.now();
  const known = JSON.parse(sessionStorage.getItem(NODES) || "[]").filter((n) => n.address !== location.host);
  if (Date.now() - lostSince > FAILOVER_LIMIT_MS) {
    say("connection", "No node of the cluster answered for " + Math.round(FAILOVER_LIMIT_MS / 60000) +
      " minutes. Check the cluster, then reload this page.");
    return false;
  }
  say("connection", "This node (" + location.host + ") is not answering; it may be rebooting. " +
    (known.length ? "Looking for another node of the cluster…" : "Waiting for it to come back…"));
  for (const n of known) {
    if (await reachable(n.address)) {
      say("connection", "Continuing on node " + n.name + " (" + n.address + ")…");
      // The token travels in the fragment, which is never sent to a server.
      location.assign("https://" + n.address + "/#token=" + encodeURIComponent(token) +
        "&user=" + encodeURIComponent(sessionStorage.getItem(USER_NAME) || ""));
      return true;
    }
  }
  return true;
}

// ---- starting an upgrade ----

async function verify(ev) {
  ev.preventDefault();
  const raw = $("path").value.trim();
  say("start-error", "");
  if (!raw) { say("start-error", "Enter the path of the upgrade file, for example upgrade/qumulo_core_7.1.0.qimg."); return; }
  const path = "/" + raw.replace(/^\/+/, "");
  $("upgrade-button").disabled = true;
  try {
    const r = await api("POST", "/v2/upgrade/verify-image", { image_path: path });
    if (r.status !== 200) {
      say("start-error", "The upgrade file " + path + " was refused: " + why(r));
      return;
    }
    if (r.body.error) {
      say("start-error", "This upgrade is blocked: " + localTimes(r.body.error));
      return;
    }
    verified = { path, target: r.body.target_version, platform: r.body.upgrade_type === "SOFTWARE_AND_PLATFORM" };
    openDialog();
  } catch (_) {
    say("start-error", "The node did not answer; try again.");
  } finally {
    $("upgrade-button").disabled = false;
  }
}

function openDialog() {
  $("dlg-current").textContent = current || "unknown";
  $("dlg-new").textContent = verified.target;
  $("dlg-type").textContent = verified.platform
    ? "A platform upgrade: every node reboots into the new release."
    : "An instant upgrade: the container restarts on every node with the new release; no node reboots.";
  show($("reboot-choice"), verified.platform);
  const max = protection ? protection.max_node_failures : 1;
  const batch = $("per-batch");
  batch.max = String(Math.max(1, max));
  batch.value = String(Math.max(1, max - 1));
  $("per-batch-hint").textContent = "From 1 to " + Math.max(1, max) +
    " (the data protection tolerates " + max + " node failure" + (max === 1 ? "" : "s") + ").";
  $("complete-option").checked = true;
  $("canary-option").checked = false;
  syncBatch();
  say("dlg-error", "");
  dialogEta();
  dialogAssess();
  $("confirm").showModal();
  (verified.platform ? $("complete-option") : $("start")).focus();
}

function syncBatch() {
  const rolling = $("rolling-option").checked;
  show($("batch-row"), rolling);
}

// The request the dialog's choices make, or a string saying what is wrong.
function dialogBody() {
  const rolling = verified.platform && $("rolling-option").checked;
  const body = { image_path: verified.path, auto_commit: true, do_rolling_reboot: rolling };
  if (rolling) {
    const k = Number($("per-batch").value);
    const max = Number($("per-batch").max);
    if (!Number.isInteger(k) || k < 1 || k > max) {
      return "Nodes to reboot at a time: a whole number from 1 to " + max + ".";
    }
    body.num_nodes_to_reboot = k;
    if ($("canary-option").checked) body.canary = 1;
  }
  return body;
}

// The preview of the dialog's choices: the batches and the expected time.
let etaAsked = 0;
async function dialogEta() {
  const body = dialogBody();
  const asked = ++etaAsked;
  if (typeof body === "string") { say("dlg-eta", ""); return; }
  const r = await api("POST", "/v1/qimg/upgrade/preview", body).catch(() => null);
  if (asked !== etaAsked) return; // the choices changed meanwhile
  if (!r || r.status !== 200) { say("dlg-eta", ""); return; }
  const p = r.body;
  let t = "Expected time: about " + took(p.total_ms) + " (" +
    p.phases.map((x) => x.phase + " about " + took(x.expected_ms) + ": " + x.basis).join("; ") + ").";
  if (p.batches.length > 1) {
    t += " Reboot order: " + p.batches.map((b) => b.join(" + ")).join(", then ") + ".";
  }
  say("dlg-eta", t);
}

// The assessment of the dialog's choices; a failing check holds the start
// until the operator overrides it.
let assessAsked = 0;
let failing = [];
function syncStart() {
  const override = $("dlg-override").checked;
  $("start").disabled = failing.length > 0 && !override;
}
async function dialogAssess() {
  const body = dialogBody();
  const asked = ++assessAsked;
  failing = [];
  $("dlg-override").checked = false;
  show($("dlg-override-row"), false);
  show($("dlg-assess-list"), false);
  if (typeof body === "string") { say("dlg-assess-summary", ""); syncStart(); return; }
  say("dlg-assess-summary", "Checking every node…");
  const req = { image_path: body.image_path };
  if (body.num_nodes_to_reboot) req.num_nodes_to_reboot = body.num_nodes_to_reboot;
  const r = await api("POST", "/v1/qimg/upgrade/assess", req).catch(() => null);
  if (asked !== assessAsked) return; // the choices changed meanwhile
  if (!r || r.status !== 200) {
    say("dlg-assess-summary", "The checks could not be run: " + (r ? why(r) : "the node did not answer") + ".");
    syncStart();
    return;
  }
  const v = assessView(r.body);
  say("dlg-assess-summary", v.summary);
  $("dlg-assess-list").replaceChildren(...v.items.map((i) => {
    const li = document.createElement("li");
    li.textContent = i.text;
    li.className = i.bad ? "bad" : "warn";
    return li;
  }));
  show($("dlg-assess-list"), v.items.length > 0);
  failing = v.failing;
  $("dlg-override-text").textContent = "Override the failing checks (" + failing.join(", ") + "); the upgrade's history keeps this.";
  show($("dlg-override-row"), failing.length > 0);
  syncStart();
}

async function startUpgrade(ev) {
  ev.preventDefault();
  const body = dialogBody();
  if (typeof body === "string") {
    say("dlg-error", body);
    return;
  }
  if (failing.length) {
    if (!$("dlg-override").checked) {
      say("dlg-error", "Checks fail: override them to start anyway.");
      return;
    }
    body.overrides = failing;
  }
  $("start").disabled = true;
  try {
    const r = await api("POST", "/v2/upgrade/prepare", body);
    if (r.status >= 300) {
      say("dlg-error", "The upgrade did not start: " + why(r));
      return;
    }
    $("confirm").close();
    poll();
  } catch (_) {
    say("dlg-error", "The node did not answer; try again.");
  } finally {
    syncStart();
  }
}

// ---- the rollback dialog and finalize ----

let rollbackTo = null; // the view's, when the dialog opens
let rollbackPlatform = false;
function openRollback() {
  $("rb-title").textContent = "Roll back to " + rollbackTo + "?";
  $("rb-text").textContent = rollbackPlatform
    ? "Every node reboots into the release it ran before the upgrade."
    : "Every node restarts the container it ran before the upgrade; no node reboots.";
  show($("rb-choice"), rollbackPlatform);
  $("rb-rolling").checked = true;
  say("rb-error", "");
  $("rb-start").disabled = false;
  $("rollback-dialog").showModal();
  $("rb-cancel").focus();
}

async function startRollback(ev) {
  ev.preventDefault();
  const body = rollbackPlatform ? { do_rolling_reboot: $("rb-rolling").checked } : {};
  $("rb-start").disabled = true;
  const r = await api("POST", "/v1/qimg/upgrade/rollback", body).catch(() => null);
  if (!r) say("rb-error", "The node did not answer; try again.");
  else if (r.status >= 300) say("rb-error", "The rollback did not start: " + why(r));
  else $("rollback-dialog").close();
  $("rb-start").disabled = false;
  poll();
}

async function post(path, what) {
  const r = await api("POST", path).catch(() => null);
  if (!r) say("problem", what + ": the node did not answer.");
  else if (r.status >= 300) say("problem", what + ": " + why(r));
  poll();
}

// ---- wiring ----

document.addEventListener("DOMContentLoaded", () => {
  const m = /^#token=([^&]+)(?:&user=([^&]*))?/.exec(location.hash);
  if (m) {
    token = decodeURIComponent(m[1]);
    sessionStorage.setItem(TOKEN, token);
    if (m[2]) sessionStorage.setItem(USER_NAME, decodeURIComponent(m[2]));
    history.replaceState(null, "", location.pathname);
  }
  $("login-form").addEventListener("submit", logIn);
  $("logout").addEventListener("click", () => loggedOut(""));
  $("start-form").addEventListener("submit", verify);
  $("path").addEventListener("input", () => say("start-error", ""));
  $("confirm-form").addEventListener("submit", startUpgrade);
  $("cancel").addEventListener("click", () => $("confirm").close());
  const rechoose = () => { syncBatch(); dialogEta(); dialogAssess(); };
  $("complete-option").addEventListener("change", rechoose);
  $("rolling-option").addEventListener("change", rechoose);
  $("per-batch").addEventListener("input", () => { dialogEta(); dialogAssess(); });
  $("dlg-override").addEventListener("change", syncStart);
  $("commit").addEventListener("click", () => post("/v2/upgrade/commit", "Commit"));
  $("pause").addEventListener("click", () => post("/v1/shutdown/reboot/pause", "Pause"));
  $("resume").addEventListener("click", () => post("/v1/shutdown/reboot/resume", "Resume"));
  $("finalize").addEventListener("click", () => post("/v1/qimg/upgrade/finalize", "Finalize"));
  $("rollback").addEventListener("click", openRollback);
  $("rb-cancel").addEventListener("click", () => $("rollback-dialog").close());
  $("rollback-form").addEventListener("submit", startRollback);
  if (token) started(); else loggedOut("");
});
