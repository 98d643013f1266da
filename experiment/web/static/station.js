// cuedpain station page: renders what the station sends; every decision is the station's.
// State comes from GET /api/state and the "state" events of /api/stream; the live view from
// its "live" events. Actions are POSTs with the token in the X-Cuedpain-Token header.
"use strict";
(function () {
  const token = new URLSearchParams(location.search).get("token") || "";
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
    }
    for (const k of kids) e.append(k);
    return e;
  };
  let state = null, selectedKey = null, blockFor = null, live = null;
  // The page shares the stimulus computer with the run it follows, so it draws little: the chart is
  // redrawn only when new samples arrived, at most every DRAW_EVERY_MS, never while the page is hidden;
  // while a step runs it shows the last WINDOW_S seconds (the whole trace once it ended), thinned to
  // about two points per pixel keeping each bucket's lowest and highest measured pressure (no peak is
  // lost). chart.data keeps every sample received.
  const WINDOW_S = 180, DRAW_EVERY_MS = 1000;
  const chart = { plot: null, data: [[], [], [], []], ceiling: null, key: null, want: null, ended: false,
    dirty: false, timer: null, lastDraw: 0, shown: 0 };
  window.cuedpain = { chart, get state() { return state; }, get live() { return live; } };

  async function api(path, body) {
    const opts = body === undefined ? {} : {
      method: "POST", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-Cuedpain-Token": token } };
    const sep = path.includes("?") ? "&" : "?";
    const r = await fetch(path + sep + "token=" + encodeURIComponent(token), opts);
    const text = await r.text();
    let doc = null;
    try { doc = JSON.parse(text); } catch (e) { doc = { detail: text }; }
    if (!r.ok) throw new Error(doc.detail || r.statusText);
    return doc;
  }

  // ------------------------------------------------------------ the visit and its checklist
  function render(doc) {
    state = doc;
    const st = doc.station, dry = st.dry_run, watch = st.role !== "control";
    document.body.classList.toggle("watch", watch);
    $("mode").textContent = dry ? "DRY RUN" : "REAL";
    $("mode").className = "mode " + (dry ? "dry" : "real");
    $("role").textContent = watch ? "WATCH ONLY" : "";
    document.title = (dry ? "DRY RUN - " : "") + "cuedpain station";
    $("dryrun").hidden = !dry;
    $("dataroot").textContent = st.data;
    const plan = $("plan");
    const wanted = doc.selection ? doc.selection.plan : plan.value;
    const options = [...doc.choices.plans.map((p) => ["visit plan", p]), ...doc.choices.protocols.map((p) => ["one run of", p])];
    if (plan.options.length !== options.length) {
      plan.replaceChildren(...options.map(([kind, p]) => el("option", { value: p, text: kind + ": " + p })));
    }
    if (wanted) plan.value = wanted;
    if (doc.selection && document.activeElement !== $("participant") && document.activeElement !== $("session")) {
      $("participant").value = doc.selection.participant;
      $("session").value = doc.selection.session || "";
    }
    $("ports").hidden = !doc.rig_ports_missing || watch;
    if (doc.rig_ports_missing && !$("ports-table").dataset.loaded) loadPorts();
    $("visit").hidden = !doc.visit && !doc.error;
    $("visit-name").textContent = doc.visit ? doc.visit.name + (doc.selection ? " - sub-" + doc.selection.participant + (doc.selection.session ? ", session " + doc.selection.session : "") : "") : "";
    $("visit-error").textContent = doc.error || "";
    const list = $("checklist");
    list.replaceChildren(...doc.rows.map((r) => {
      const li = el("li", { class: r.state.replace(" ", ""), "data-key": r.key, "data-state": r.state },
        el("span", { text: r.title }), el("span", { class: "state " + r.state.replace(" ", ""), text: r.state }));
      if (r.detail && r.state !== "to do") li.append(el("span", { class: "detail", text: r.detail }));
      li.addEventListener("click", () => { selectedKey = r.key; showStep(); });
      return li;
    }));
    renderRuns(doc);
    showStep();
  }

  function currentRow() {
    if (!state || !state.rows.length) return null;
    return state.rows.find((r) => r.key === selectedKey) || state.rows.find((r) => r.state === "running")
      || state.rows.find((r) => r.state === "next") || state.rows[state.rows.length - 1];
  }

  async function showStep() {
    const row = currentRow();
    $("step").hidden = !row;
    if (!row) return;
    $("step-title").textContent = row.title + " (" + row.state + ")";
    const who = row.reader === "participant" ? "The participant reads" : "Read this to the participant";
    $("step-instructions").replaceChildren(...row.instructions.map((p, i) =>
      el("div", { class: "page" }, el("b", { text: who + " (" + (i + 1) + "/" + row.instructions.length + "): " }), p)));
    const busy = state.active && state.active.alive;
    const adjust = row.kind === "scanner_check" && row.state === "done" && !busy;
    $("adjust").hidden = !adjust;
    const key = row.key + ":" + row.state;
    if (row.state === "next" && blockFor !== key) {
      blockFor = key;
      $("block").replaceChildren(el("p", { text: "checking..." }));
      try {
        const b = await api("/api/block?key=" + encodeURIComponent(row.key));
        renderBlock(b);
        $("start").disabled = !!b.error || busy || state.station.role !== "control";
        $("start-error").textContent = b.error ? "Cannot start: " + b.error : "";
      } catch (e) { $("block").replaceChildren(el("p", { class: "error", text: e.message })); }
    } else if (row.state !== "next") {
      blockFor = null;
      $("block").replaceChildren();
      $("step-command").textContent = "";
      $("start").disabled = true;
      $("start-error").textContent = "";
    } else {
      $("start").disabled = busy || !!$("start-error").textContent;
    }
    $("start").dataset.key = row.key;
    $("start").textContent = row.state === "next" && row.tries && row.tries.length ? "Redo: start this run again" : "Start";
  }

  function renderBlock(b) {
    const head = el("tr", {}, el("th", { colspan: "2", class: b.mode === "REAL" ? "" : "dryhead",
      text: "CHECK BEFORE STARTING (" + b.mode + ")" }));
    $("block").replaceChildren(el("table", {}, head, ...b.lines.map(([k, v]) => el("tr", {}, el("td", { text: k }), el("td", { text: v })))));
    $("step-command").textContent = b.command || "";
  }

  function renderRuns(doc) {
    const runs = [];
    for (const r of doc.rows) {
      if (r.kind !== "run") continue;
      if (r.state === "done") runs.push({ row: r, run_dir: r.evidence, status: "completed", report: r.report, counted: true });
    }
    const seen = new Set(runs.map((x) => x.run_dir));
    for (const r of doc.rows) for (const t of r.tries || []) {
      if (seen.has(t.run_dir)) continue;
      seen.add(t.run_dir);
      runs.push({ row: r, run_dir: t.run_dir, status: t.discarded !== null ? "discarded: " + t.discarded :
        (t.attempt ? "attempt (never reached the first volume)" : t.status + (t.reason ? " (" + t.reason + ")" : "")), counted: false });
    }
    $("runs").hidden = runs.length === 0;
    $("runs-table").replaceChildren(el("tr", {}, el("th", { text: "run directory" }), el("th", { text: "status" }),
      el("th", { text: "QC report" }), el("th", { text: "" })), ...runs.map((x) => {
      const tr = el("tr", { "data-run": x.run_dir });
      tr.append(el("td", { text: x.run_dir.split("/").slice(-1)[0] }), el("td", { text: x.status }));
      const rep = el("td");
      if (x.report) rep.append(el("a", { href: x.report + "?token=" + encodeURIComponent(token), target: "_blank", class: "report", text: "QC report" }));
      tr.append(rep);
      const act = el("td");
      if (x.counted && state.station.role === "control") {
        const reason = el("input", { placeholder: "reason", class: "discard-reason control", size: "24" });
        const btn = el("button", { class: "control discard", text: "Mark as discarded" });
        btn.addEventListener("click", async () => {
          try { await api("/api/discard", { run_dir: x.run_dir, reason: reason.value }); refresh(); }
          catch (e) { alert(e.message); }
        });
        act.append(reason, btn);
      }
      tr.append(act);
      return tr;
    }));
  }

  async function loadPorts() {
    try {
      const ports = await api("/api/ports");
      $("ports-table").dataset.loaded = "1";
      $("ports-table").replaceChildren(el("tr", {}, el("th", { text: "port" }), el("th", { text: "USB id" }), el("th", { text: "probably" })),
        ...ports.map((p) => el("tr", {}, el("td", { text: p.device }), el("td", { text: p.usb_id || "-" }), el("td", { text: p.guess }))));
    } catch (e) { /* the list is a help only */ }
  }

  // ------------------------------------------------------------ the live view
  function ensureChart(ceiling, data) {
    if (chart.plot && chart.ceiling === ceiling) return false;
    const box = $("chart");
    box.replaceChildren();
    chart.ceiling = ceiling;
    const opts = {
      width: Math.max(400, box.clientWidth || 900), height: 260,
      scales: { x: { time: false }, y: { range: (u, lo, hi) => [0, Math.max(hi || 0, ceiling || 0) * 1.1 + 1] } },
      axes: [{ label: "seconds" }, { label: "kPa" }],
      legend: { live: false },
      series: [{ label: "s" }, { label: "measured", stroke: "#222", width: 1.5, points: { show: false } },
        { label: "commanded", stroke: "#d55e00", width: 1.5, dash: [6, 4], points: { show: false } },
        { label: "ceiling", stroke: "#b00020", width: 1, dash: [2, 3], points: { show: false } }],
    };
    chart.plot = new uPlot(opts, data, box);
    return true;
  }

  function firstAtOrAfter(a, x) {   // a sorted
    let lo = 0, hi = a.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (a[mid] < x) lo = mid + 1; else hi = mid; }
    return lo;
  }

  function shownData(width) {
    const d = chart.data, t = d[0], n = t.length;
    const lo = !chart.ended && n && t[n - 1] - t[0] > WINDOW_S ? firstAtOrAfter(t, t[n - 1] - WINDOW_S) : 0;
    const buckets = Math.max(100, Math.round(width));
    if (n - lo <= 2 * buckets) return lo === 0 ? d : d.map((a) => a.slice(lo));
    const size = Math.ceil((n - lo) / buckets), p = d[1], keep = [];
    for (let b = lo; b < n; b += size) {
      let imin = b, imax = b;
      for (let i = b + 1; i < Math.min(n, b + size); i++) {
        if (p[i] !== null && (p[imin] === null || p[i] < p[imin])) imin = i;
        if (p[i] !== null && (p[imax] === null || p[i] > p[imax])) imax = i;
      }
      keep.push(Math.min(imin, imax));
      if (imax !== imin) keep.push(Math.max(imin, imax));
    }
    return d.map((a) => keep.map((i) => a[i]));
  }

  function draw() {   // in the same task as the live event's text changes when it can: one frame, not two
    if (chart.timer !== null) { clearTimeout(chart.timer); chart.timer = null; }
    if (!chart.dirty || document.visibilityState === "hidden") return;
    const wait = chart.lastDraw + DRAW_EVERY_MS - 50 - performance.now();
    if (wait > 0) { chart.timer = setTimeout(draw, wait + 50); return; }   // drawn by the next event, or then
    chart.dirty = false;
    chart.lastDraw = performance.now();
    const box = $("chart"), data = shownData(chart.plot ? chart.plot.width : Math.max(400, box.clientWidth || 900));
    chart.shown = data[0].length;
    if (!ensureChart(chart.want, data)) chart.plot.setData(data);
  }
  document.addEventListener("visibilitychange", draw);

  function setProp(e, k, v) {
    if (e[k] !== v) e[k] = v;
  }

  function setText(id, text) {   // touch the page only when something changed: the run shares this computer
    const e = $(id);
    if (e.textContent !== text) e.textContent = text;
  }

  function summarize(cls, text) {
    const sum = $("summary");
    if (sum.dataset.text === cls + text) return;
    sum.dataset.text = cls + text;
    sum.replaceChildren(...(text ? [el("p", { class: cls, text: text })] : []));
  }

  function onLive(msg) {
    live = msg;
    const v = msg.view, step = msg.step;
    setProp($("live"), "hidden", false);
    if (msg.reset || chart.key !== step.key + step.started) {
      chart.data = [[], [], [], []];
      chart.key = step.key + step.started;
      chart.plot = null;
    }
    const ceil = v.ceiling_kpa;
    for (const [t, p, tgt] of msg.points) {
      chart.data[0].push(t); chart.data[1].push(p); chart.data[2].push(tgt); chart.data[3].push(ceil);
    }
    const ended = !!v.end || !step.alive;
    if (msg.points.length || !chart.plot || chart.ceiling !== ceil || chart.ended !== ended) {
      chart.want = ceil;
      chart.ended = ended;
      chart.dirty = true;
    }
    const how = v.end ? (step.alive ? " - ended, deriving its outputs" : " - ended") : (step.alive ? " - running" : " - process gone");
    setText("live-title", step.title + how + (v.dry_run ? " (DRY RUN)" : ""));
    setText("v-phase", v.phase_label || "-");
    setText("v-trial", v.purpose === "run" ? (v.trial ? v.trial + " of " + v.n_trials : "- of " + (v.n_trials || "-"))
      : (v.stimulus ? "stimulus " + v.stimulus : "-"));
    setText("v-next", v.next_in_s === null || v.next_in_s === undefined ? "-" : v.next_in_s.toFixed(1) + " s");
    setText("v-pulses", v.purpose === "run" ? v.pulses + " of " + v.pulses_expected + (v.pulses_discarded ? " (+" + v.pulses_discarded + " discarded)" : "") : "-");
    setText("v-tr", v.tr_est_s ? v.tr_est_s.toFixed(3) + " s (plan " + v.tr_s + ")" : "-");
    setText("v-drops", v.purpose === "run" ? String(v.dropped_frames) : "-");
    const warnings = v.warnings || [];
    if ($("warnings").childElementCount !== warnings.length) {
      $("warnings").replaceChildren(...warnings.map((w) => el("li", { class: w.kind,
        text: (w.at_s !== null ? w.at_s + " s: " : "") + w.kind.toUpperCase() + " " + (w.code || "") + ": " + w.message })));
    }
    setProp($("abort"), "disabled", !step.alive || !!v.end || state === null || state.station.role !== "control");
    setProp($("abort"), "hidden", !step.alive || !!v.end);
    if (v.end) {
      const good = v.end.status === "completed" || v.end.ok === true;
      const parts = ["Ended: " + (v.end.status || (v.end.ok ? "ok" : "problems")) + (v.end.reason ? " (" + v.end.reason + ")" : "") +
        (v.end.message ? ": " + v.end.message : "") + (v.end.result ? " -> " + v.end.result : "")];
      if (v.purpose === "run") parts.push("pulses " + v.pulses + " of " + v.pulses_expected + ", dropped frames " + v.dropped_frames +
        ", warnings " + (v.warnings || []).length);
      if (v.ratings && v.ratings.length) parts.push("ratings: " + v.ratings.map((r) => r.target_kpa + " kPa: " + (r.rating === null ? "timed out" : r.rating)).join(", "));
      summarize(good ? "ok" : "bad", parts.join("; "));
    } else if (!step.alive) {
      summarize("bad", "The step's process ended without an end record (killed?). The checklist shows what counts.");
    } else summarize("", "");
    setText("console", (msg.console || []).join("\n"));
    draw();
  }

  // ------------------------------------------------------------ actions
  $("select-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("select-error").textContent = "";
    try {
      selectedKey = null; blockFor = null;
      render(await api("/api/select", { participant: $("participant").value, session: $("session").value, plan: $("plan").value }));
    } catch (e) { $("select-error").textContent = e.message; }
  });
  async function start(pressure) {
    $("start-error").textContent = "";
    $("start").disabled = true;
    try {
      const row = currentRow();
      await api("/api/start", { key: row.key, pressure_kpa: pressure });
      selectedKey = null; blockFor = null;
      await refresh();
    } catch (e) { $("start-error").textContent = e.message; }
  }
  $("start").addEventListener("click", () => start(null));
  $("adjust-start").addEventListener("click", () => start($("adjust-kpa").value));
  $("abort").addEventListener("click", async () => {
    try { await api("/api/abort", {}); } catch (e) { alert(e.message); }
  });

  async function refresh() {
    try { render(await api("/api/state")); } catch (e) { $("conn").textContent = "error: " + e.message; }
  }

  function connect() {
    const es = new EventSource("/api/stream?token=" + encodeURIComponent(token));
    es.addEventListener("open", () => { $("conn").textContent = "connected"; });
    es.addEventListener("error", () => { $("conn").textContent = "station not reachable; retrying..."; });
    es.addEventListener("state", (e) => render(JSON.parse(e.data)));
    es.addEventListener("live", (e) => onLive(JSON.parse(e.data)));
  }
  refresh();
  connect();
})();
