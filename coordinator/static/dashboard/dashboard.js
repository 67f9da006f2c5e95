// The swarm dashboard: reads the coordinator's /v1 API with the operator's key and redraws the
// page it shows every few seconds. No framework and no build step.
"use strict";

const POLL_MS = 3000;
const KEY_STORE = "swarm.apiKey";
const state = { page: "overview", job: null, charts: {}, timer: null };

const $ = (selector) => document.querySelector(selector);

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const key = localStorage.getItem(KEY_STORE) || "";
  const response = await fetch(path, {
    ...options,
    headers: { Authorization: `Bearer ${key}`, ...(options.headers || {}) },
  });
  const body = await response.json();
  if (response.status === 401) throw new Unauthorized(body.error.message);
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

// -- formatting ------------------------------------------------------------------------------

function text(value) {
  return value === null || value === undefined ? "–" : String(value);
}

function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function si(value, unit) {
  if (!value) return `0 ${unit}`;
  const prefixes = ["", "k", "M", "G", "T", "P", "E"];
  let index = 0;
  while (Math.abs(value) >= 1000 && index < prefixes.length - 1) {
    value /= 1000;
    index += 1;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${prefixes[index]}${unit}`;
}

function ago(unixSeconds) {
  if (!unixSeconds) return "never";
  const seconds = Math.max(0, Date.now() / 1000 - unixSeconds);
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${(seconds / 3600).toFixed(1)} h ago`;
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

function cell(content, className) {
  const td = document.createElement("td");
  if (content instanceof Node) td.append(content);
  else td.textContent = content;
  if (className) td.className = className;
  return td;
}

function fill(tableSelector, rows, empty) {
  const body = $(`${tableSelector} tbody`);
  body.replaceChildren(...rows);
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = $(`${tableSelector} thead tr`).children.length;
    tr.append(td);
    body.append(tr);
  }
}

function row(cells) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  return tr;
}

function cards(selector, items) {
  $(selector).replaceChildren(
    ...items.map(([label, value]) => {
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.label = label;
      const name = document.createElement("div");
      name.className = "label";
      name.textContent = label;
      const shown = document.createElement("div");
      shown.className = "value";
      shown.textContent = value;
      card.append(name, shown);
      return card;
    }),
  );
}

function badge(status) {
  const span = document.createElement("span");
  span.className = `status ${status}`;
  span.textContent = status;
  return span;
}

function progress(done, total) {
  const wrap = document.createElement("span");
  const bar = document.createElement("span");
  bar.className = "bar";
  const inner = document.createElement("span");
  inner.style.width = total ? `${Math.min(100, (100 * done) / total)}%` : "0%";
  bar.append(inner);
  wrap.append(bar, ` ${done}/${total ?? "?"}`);
  return wrap;
}

// -- charts ----------------------------------------------------------------------------------

function chart(name, container, series, data) {
  const width = Math.max(320, $(container).clientWidth - 20);
  const existing = state.charts[name];
  if (existing && existing.series.length === series.length + 1) {
    existing.setSize({ width, height: 240 });
    existing.setData(data);
    return;
  }
  if (existing) existing.destroy();
  const colors = ["#2f6fdf", "#e07b39", "#1f8a4c", "#8e44ad"];
  state.charts[name] = new uPlot(
    {
      width,
      height: 240,
      series: [
        {},
        ...series.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 2 })),
      ],
      // Rounds are whole numbers: no ticks between them.
      axes: [name === "throughput" ? {} : { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, { size: 60 }],
      scales: { x: { time: name === "throughput" } },
    },
    data,
    $(container),
  );
}

// -- pages -----------------------------------------------------------------------------------

async function showOverview() {
  const status = await api("/v1/swarm/status");
  const jobs = status.jobs || {};
  cards("#overview-cards", [
    ["workers online", number(status.workers_online)],
    ["compute", si(status.flops_per_s, "FLOP/s")],
    ["tokens / s (10 min)", number(status.tokens_per_s, 1)],
    ["jobs running", number(jobs.running || 0)],
    ["jobs queued", number(status.queue_length)],
    ["jobs succeeded", number(jobs.succeeded || 0)],
  ]);
  const draining = status.draining;
  $("#drain-banner").hidden = !draining;
  $("#drain-banner").textContent = draining
    ? `Draining since ${new Date(draining.since * 1000).toLocaleTimeString()}` +
      `${draining.reason ? `: ${draining.reason}` : ""}. No new tasks are handed out.`
    : "";
  $("#drain").textContent = draining ? "undrain the swarm" : "drain the swarm";
  $("#drain").dataset.action = draining ? "undrain" : "drain";
  const throughput = status.throughput;
  const times = throughput.tokens_per_s.map((_, i) => throughput.start + i * throughput.bucket_s);
  chart("throughput", "#throughput-chart", ["tokens/s"], [times, throughput.tokens_per_s]);
  fill(
    "#devices",
    Object.entries(status.workers_by_device).map(([device, count]) =>
      row([cell(device), cell(number(count), "num")]),
    ),
    "no workers online",
  );
}

function eta(job) {
  const s = job.swarm;
  if (job.status !== "running" || !s.started_at || !s.rounds_completed || !s.total_rounds) {
    return "–";
  }
  const elapsed = Date.now() / 1000 - s.started_at;
  return duration((elapsed / s.rounds_completed) * (s.total_rounds - s.rounds_completed));
}

function actions(job) {
  const span = document.createElement("span");
  const moves = {
    running: ["pause", "cancel"],
    queued: ["pause", "cancel"],
    validating_files: ["cancel"],
    paused: ["resume", "cancel"],
  }[job.status] || [];
  for (const move of moves) {
    const button = document.createElement("button");
    button.textContent = move;
    button.dataset.action = move;
    button.addEventListener("click", async (event) => {
      event.stopPropagation();
      button.disabled = true;
      try {
        await api(`/v1/fine_tuning/jobs/${job.id}/${move}`, { method: "POST" });
      } catch (error) {
        alert(`${move} ${job.id}: ${error.message}`);
      }
      refresh();
    });
    span.append(button, " ");
  }
  return span;
}

async function showJobs() {
  const jobs = (await api("/v1/fine_tuning/jobs?limit=100")).data;
  fill(
    "#jobs",
    jobs.map((job) => {
      const tr = row([
        cell(job.id),
        cell(job.swarm.owner),
        cell(job.model),
        cell(job.swarm.spec.method),
        cell(badge(job.status)),
        cell(progress(job.swarm.rounds_completed, job.swarm.total_rounds)),
        cell(number(job.swarm.eval_loss, 4), "num"),
        cell(eta(job)),
        cell(number(job.swarm.credits_consumed, 6), "num"),
        cell(actions(job)),
      ]);
      tr.className = `clickable${job.id === state.job ? " selected" : ""}`;
      tr.dataset.job = job.id;
      tr.addEventListener("click", () => {
        state.job = job.id;
        refresh();
      });
      return tr;
    }),
    "no jobs yet",
  );
  if (!state.job && jobs.length) state.job = jobs[0].id;
  if (!state.job) return;
  const rounds = (await api(`/v1/swarm/jobs/${state.job}/rounds`)).data;
  $("#job-detail").hidden = false;
  $("#job-title").textContent = `${state.job}: loss by round`;
  chart(
    "loss",
    "#loss-chart",
    ["train loss", "held-out loss"],
    [rounds.map((r) => r.round), rounds.map((r) => r.train_loss), rounds.map((r) => r.eval_loss)],
  );
}

async function showWorkers() {
  const workers = (await api("/v1/swarm/workers")).data;
  fill(
    "#workers",
    workers.map((w) => {
      const hardware = w.hardware || {};
      const device = `${hardware.device_type || "?"}${hardware.device_name ? ` (${hardware.device_name})` : ""}`;
      const tr = row([
        cell(w.name),
        cell(w.id),
        cell(`${device}, ${si(hardware.memory_bytes || 0, "B")}`),
        cell(number(w.tasks_accepted), "num"),
        cell(number(w.tasks_failed), "num"),
        cell(text(w.trust)),
        cell(`${w.online ? "online, " : ""}${ago(w.last_seen_at)}`),
        cell(w.download_bytes_per_s ? si(w.download_bytes_per_s, "B/s") : "–", "num"),
        cell(w.banned ? `banned: ${w.ban_reason}` : text(w.assigned_job_id)),
        cell(banButton(w)),
      ]);
      tr.dataset.worker = w.id;
      if (w.banned) tr.className = "banned";
      return tr;
    }),
    "no workers have registered",
  );
}

async function post(path, body) {
  try {
    await api(path, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body || {}),
    });
  } catch (error) {
    alert(`${path}: ${error.message}`);
  }
  refresh();
}

function banButton(worker) {
  const button = document.createElement("button");
  const move = worker.banned ? "unban" : "ban";
  button.textContent = move;
  button.dataset.action = move;
  button.addEventListener("click", () => {
    button.disabled = true;
    post(
      `/v1/swarm/workers/${worker.id}/${move}`,
      move === "ban" ? { reason: "banned from the dashboard" } : undefined,
    );
  });
  return button;
}

async function showCredits() {
  const board = await api("/v1/swarm/credits/leaderboard?limit=50");
  cards("#credit-cards", [["research pool", number(board.research_pool, 6)]]);
  fill(
    "#leaderboard",
    board.data.map((entry, i) =>
      row([cell(String(i + 1)), cell(entry.account), cell(number(entry.balance, 6), "num")]),
    ),
    "no credits granted yet",
  );
}

async function showHealth() {
  const [status, health, rejections, workers] = await Promise.all([
    api("/v1/swarm/status"),
    fetch("/healthz").then((r) => r.json()),
    api("/v1/swarm/rejections"),
    api("/v1/swarm/workers"),
  ]);
  const rounds = status.round_seconds;
  cards("#health-cards", [
    ["database latency", `${number(status.database_latency_ms, 2)} ms`],
    ["queued jobs", number(status.queue_length)],
    ["pending tasks", number(status.tasks.pending || 0)],
    ["leased tasks", number(status.tasks.leased || 0)],
    ["expired leases", number(status.leases.expired || 0)],
    ["results rejected", number(status.results.rejected)],
    ["round time (median)", duration(rounds.median)],
    ["round time (max)", duration(rounds.max)],
    ["uptime", duration(health.uptime_s)],
  ]);
  const entries = (object) => Object.entries(object).sort();
  fill(
    "#tasks",
    entries(status.tasks).map(([k, v]) => row([cell(k), cell(number(v), "num")])),
    "no tasks yet",
  );
  fill(
    "#leases",
    entries(status.leases).map(([k, v]) => row([cell(k), cell(number(v), "num")])),
    "no leases yet",
  );
  fill(
    "#rejections",
    rejections.data.map((r) =>
      row([cell(ago(r.at)), cell(`${r.worker_name} (${r.worker_id})`), cell(r.task_id), cell(r.reason)]),
    ),
    "no result has been rejected",
  );
  fill(
    "#banned",
    workers.data
      .filter((w) => w.banned)
      .map((w) => row([cell(w.name), cell(w.id), cell(w.ban_reason), cell(ago(w.last_seen_at))])),
    "no worker is banned",
  );
}

const PAGES = {
  overview: showOverview,
  jobs: showJobs,
  workers: showWorkers,
  credits: showCredits,
  health: showHealth,
};

// -- the loop --------------------------------------------------------------------------------

function showLogin(message) {
  document.querySelectorAll(".page").forEach((page) => (page.hidden = true));
  $("#login").hidden = false;
  $("#login-error").textContent = message || "";
  $("#who").textContent = "";
}

async function refresh() {
  clearTimeout(state.timer);
  if (!localStorage.getItem(KEY_STORE)) {
    showLogin("");
    return;
  }
  try {
    const me = await api("/v1/swarm/me");
    $("#who").textContent = `${me.user} (${me.role})`;
    $("#login").hidden = true;
    document.querySelectorAll(".page").forEach((page) => {
      page.hidden = page.id !== `page-${state.page}`;
    });
    document.querySelectorAll("#nav a").forEach((a) => {
      a.classList.toggle("active", a.dataset.page === state.page);
    });
    await PAGES[state.page]();
    $("#updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = state.page;
  } catch (error) {
    if (error instanceof Unauthorized) {
      localStorage.removeItem(KEY_STORE);
      showLogin(error.message);
      return;
    }
    $("#updated").textContent = `update failed: ${error.message}`;
  }
  state.timer = setTimeout(refresh, POLL_MS);
}

function route() {
  const page = location.hash.replace("#", "");
  state.page = page in PAGES ? page : "overview";
  refresh();
}

$("#drain").addEventListener("click", () => {
  const move = $("#drain").dataset.action;
  post(`/v1/swarm/${move}`, move === "drain" ? { reason: "drained from the dashboard" } : undefined);
});
$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY_STORE, $("#key").value.trim());
  $("#key").value = "";
  refresh();
});
window.addEventListener("hashchange", route);
window.addEventListener("resize", () => refresh());
route();
