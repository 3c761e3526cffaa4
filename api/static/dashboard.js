// The calibration dashboard: reads labelq's dashboard queries and draws them with Chart.js
// (served from the package, no CDN). Every figure comes from the API; nothing is computed here
// but layout.
"use strict";

const KEY = "labelq-key";
const $ = (id) => document.getElementById(id);
const charts = {};
let me = null;

function headers() {
  const key = sessionStorage.getItem(KEY);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) {
    sessionStorage.removeItem(KEY);
    $("key-form").hidden = false;
    throw new Error("an API key is needed");
  }
  const body = await response.json();
  if (!response.ok) {
    const where = body.field ? ` (${body.field})` : "";
    throw new Error(`${path}: ${body.error || JSON.stringify(body)}${where}`);
  }
  return body;
}

function fmt(x, digits = 3) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function isoOrNull(value) {
  return value ? new Date(value + "Z").toISOString() : null; // the inputs are read as UTC
}

function filters() {
  const q = new URLSearchParams();
  const version = $("version").value;
  if (version) q.set("version", version);
  q.set("calibration", $("calibration").value);
  const from = isoOrNull($("from").value), to = isoOrNull($("to").value);
  if (from) q.set("from", from);
  if (to) q.set("to", to);
  return q;
}

function base() {
  return `/v1/classifiers/${encodeURIComponent($("classifier").value)}`;
}

function draw(id, config) {
  if (charts[id]) charts[id].destroy();
  config.options = { animation: false, responsive: true, maintainAspectRatio: true, aspectRatio: 1.8, ...config.options };
  charts[id] = new Chart($(id), config);
  return charts[id];
}

// Bin counts written above the reliability bars.
const countLabels = {
  id: "countLabels",
  afterDatasetsDraw(chart) {
    const meta = chart.getDatasetMeta(0);
    const counts = chart.data.datasets[0].counts || [];
    const ctx = chart.ctx;
    ctx.save();
    ctx.font = "10px system-ui";
    ctx.fillStyle = "#687086";
    ctx.textAlign = "center";
    meta.data.forEach((bar, i) => ctx.fillText(String(counts[i]), bar.x, bar.y - 4));
    ctx.restore();
  },
};

async function reliability() {
  const r = await api(`${base()}/reliability?${filters()}&bins=15`);
  const bins = r.bins.filter((b) => b.count > 0);
  $("reliability-ece").textContent = `ECE ${fmt(r.ece, 4)} · accuracy ${fmt(r.accuracy)} · n ${r.n}`;
  $("reliability-caption").textContent = r.basis.note || `computed in ${r.basis.computed}`;
  draw("reliability", {
    type: "bar",
    data: {
      datasets: [
        {
          label: "accuracy",
          data: bins.map((b) => ({ x: (b.lower + b.upper) / 2, y: b.accuracy })),
          counts: bins.map((b) => b.count),
          backgroundColor: "rgba(47,111,219,0.7)",
          barPercentage: 1,
          categoryPercentage: 1,
        },
        {
          type: "line",
          label: "perfect calibration",
          data: [{ x: 0, y: 0 }, { x: 1, y: 1 }],
          borderColor: "#999",
          borderDash: [4, 4],
          pointRadius: 0,
        },
      ],
    },
    options: {
      scales: {
        x: { type: "linear", min: 0, max: 1, title: { display: true, text: "confidence" } },
        y: { min: 0, max: 1, title: { display: true, text: "accuracy" } },
      },
    },
    plugins: [countLabels],
  });
}

async function timeseries() {
  const bucket = $("bucket").value;
  const r = await api(`${base()}/timeseries?${filters()}&bucket=${bucket}&metrics=ece,accuracy,volume,estimated_accuracy`);
  const labels = r.points.map((p) => p.bucket.slice(0, bucket === "day" ? 10 : 13));
  draw("timeseries", {
    type: "line",
    data: {
      labels,
      datasets: [
        { label: "ECE", data: r.points.map((p) => p.ece), borderColor: "#d9534f", spanGaps: true },
        { label: "accuracy", data: r.points.map((p) => p.accuracy), borderColor: "#3a9d5d", spanGaps: true },
        // Estimated from confidences, no labels needed: every bucket has it.
        { label: "estimated accuracy", data: r.points.map((p) => p.estimated_accuracy), borderColor: "#3a9d5d", borderDash: [6, 4] },
      ],
    },
    options: { scales: { y: { min: 0, max: 1 } } },
  });
}

async function histogram() {
  const r = await api(`${base()}/confidence-histogram?${filters()}&bins=20`);
  const labels = r.bins.map((b) => `${b.lower.toFixed(2)}–${b.upper.toFixed(2)}`);
  draw("histogram", {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: "correct", data: r.bins.map((b) => b.correct), backgroundColor: "#3a9d5d" },
        { label: "incorrect", data: r.bins.map((b) => b.incorrect), backgroundColor: "#d9534f" },
        { label: "no gold label", data: r.bins.map((b) => b.unlabelled), backgroundColor: "#c5cad6" },
      ],
    },
    options: { scales: { x: { stacked: true }, y: { stacked: true } } },
  });
}

async function confusion() {
  const r = await api(`${base()}/confusion?${filters()}`);
  const max = Math.max(1, ...r.matrix.flat());
  const table = $("confusion");
  table.replaceChildren();
  const head = table.insertRow();
  head.appendChild(document.createElement("th"));
  for (const label of r.labels) {
    const th = document.createElement("th");
    th.textContent = label;
    head.appendChild(th);
  }
  r.matrix.forEach((row, i) => {
    const tr = table.insertRow();
    const th = document.createElement("th");
    th.textContent = r.labels[i];
    tr.appendChild(th);
    row.forEach((count, j) => {
      const td = tr.insertCell();
      td.className = "cell";
      td.textContent = count;
      const alpha = (0.1 + 0.8 * (count / max)).toFixed(2);
      td.style.background = i === j ? `rgba(58,157,93,${alpha})` : `rgba(217,83,79,${alpha})`;
    });
  });
}

async function labelShares() {
  const bucket = $("bucket").value;
  const r = await api(`${base()}/label-distribution?${filters()}&bucket=${bucket}`);
  const palette = ["#2f6fdb", "#f0a202", "#3a9d5d", "#d9534f", "#7b52ab", "#1b998b", "#e36397"];
  const labels = r.buckets.map((b) => b.bucket.slice(0, bucket === "day" ? 10 : 13));
  const datasets = r.labels.map((label, k) => ({
    label,
    data: r.buckets.map((b) => b.shares[label]),
    backgroundColor: palette[k % palette.length],
    stack: "shares",
  }));
  datasets.push({
    type: "line",
    label: "PSI",
    data: r.buckets.map((b) => b.psi),
    borderColor: "#1d2433",
    yAxisID: "drift",
  });
  draw("labels", {
    type: "bar",
    data: { labels, datasets },
    options: {
      scales: {
        x: { stacked: true },
        y: { stacked: true, min: 0, max: 1, title: { display: true, text: "share" } },
        drift: { position: "right", min: 0, grid: { drawOnChartArea: false }, title: { display: true, text: "PSI" } },
      },
    },
  });
}

const THRESHOLDS = Array.from({ length: 21 }, (_, i) => (i * 0.05).toFixed(2));

async function selective() {
  const r = await api(`${base()}/selective?${filters()}&thresholds=${THRESHOLDS.join(",")}&target_accuracy=0.9`);
  const points = r.points.filter((p) => p.count > 0);
  $("selective-target").textContent = r.target
    ? `90% accuracy from confidence ≥ ${fmt(r.target.threshold)} (coverage ${fmt(r.target.coverage)})`
    : "90% accuracy is not reached at any threshold";
  draw("selective", {
    type: "line",
    data: {
      datasets: [
        {
          label: "accuracy above the threshold",
          data: points.map((p) => ({ x: p.coverage, y: p.accuracy })),
          borderColor: "#2f6fdb",
        },
      ],
    },
    options: {
      scales: {
        x: { type: "linear", min: 0, max: 1, title: { display: true, text: "coverage" } },
        y: { max: 1, title: { display: true, text: "accuracy" } },
      },
    },
  });
}

// Accuracy without labels: the estimate under the calibration chosen ("as stored" relies on the
// one the results were stored under), its interval, the measured accuracy where labels exist,
// and how far this traffic is from the calibration set.
async function estimate() {
  const r = await api(`${base()}/estimated-performance?${filters()}`);
  const e = r.estimate, m = r.measured, v = r.validity;
  $("estimate-stat").textContent = e.accuracy === null
    ? "no scored items"
    : `${fmt(e.accuracy)} [${fmt(e.low)}, ${fmt(e.high)}] · n ${e.n}`;
  const rows = [
    ["estimated accuracy", e.accuracy === null ? "–" : `${fmt(e.accuracy)} (${Math.round(e.level * 100)}% interval ${fmt(e.low)} – ${fmt(e.high)})`],
    ["measured accuracy", m.labelled ? `${fmt(m.accuracy)} on ${m.labelled} labelled (estimated there: ${fmt(m.estimated)})` : "no gold labels in scope"],
    ["relies on", r.calibration ? `calibration #${r.calibration.id} (${r.calibration.method}), fitted on job ${r.calibration.fitted_on_job}` : "no calibration"],
    ["shift from the calibration set", `${v.shift} · confidence PSI ${fmt(v.confidence_psi)} · label PSI ${fmt(v.label_psi)}`],
    ["reliable", v.reliable ? "yes" : `no: ${v.reasons.join("; ")}`],
    ["drift alarms", await driftLine()],
  ];
  const body = $("estimate").tBodies[0];
  body.replaceChildren(...rows.map(([k, value]) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.textContent = k;
    const td = document.createElement("td");
    td.textContent = value;
    tr.append(th, td);
    return tr;
  }));
  $("estimate").dataset.reliable = v.reliable ? "1" : "0";
}

// The classifier's drift monitor, as its last check left it.
async function driftLine() {
  const response = await fetch(`${base()}/drift`, { headers: headers() });
  if (response.status === 404) return "no monitor (PUT /v1/classifiers/{name}/drift sets one)";
  const m = await response.json();
  if (!response.ok) return m.error || "unknown";
  if (!m.state) return "not checked yet";
  const raised = Object.entries(m.state.signals || {}).filter(([, s]) => s.raised)
    .map(([name, s]) => `${name} ${fmt(s.value)} > ${fmt(s.threshold)}`);
  const when = m.checked_at ? ` (checked ${m.checked_at.slice(0, 16)})` : "";
  return (raised.length ? `raised: ${raised.join("; ")}` : m.state.note || "none raised") + when;
}

function beforeAfter(metrics, key, digits = 3) {
  const before = metrics.before || {}, after = metrics.after || {};
  return `${fmt(before[key], digits)} → ${fmt(after[key], digits)}`;
}

// Conformal fits: held-out coverage, overall and per gold label (Mondrian sets keep each
// label's; marginal ones only the average).
function coverage(metrics) {
  if (metrics.coverage === null || metrics.coverage === undefined) return "";
  const byLabel = Object.entries(metrics.coverage_by_label || {})
    .map(([label, value]) => `${label} ${fmt(value, 2)}`).join(" · ");
  return `${fmt(metrics.coverage, 2)}${byLabel ? ` (${byLabel})` : ""}`;
}

async function calibrations() {
  const rows = await api(`${base()}/calibrations`);
  const body = $("calibrations").tBodies[0];
  body.replaceChildren();
  const admin = me && me.scopes.includes("admin");
  for (const c of rows) {
    const tr = body.insertRow();
    const cells = [
      c.id, c.version, c.method, c.status,
      c.fitted_on.job_id ? `job ${c.fitted_on.job_id.slice(0, 8)}` : "",
      beforeAfter(c.metrics, "ece", 4), beforeAfter(c.metrics, "accuracy"), beforeAfter(c.metrics, "nll"),
      coverage(c.metrics),
    ];
    for (const value of cells) tr.insertCell().textContent = value;
    const action = tr.insertCell();
    if (c.active) {
      action.innerHTML = '<span class="active-badge">active</span>';
    } else if (admin && c.status === "ready") {
      const button = document.createElement("button");
      button.textContent = "Activate";
      button.dataset.calibration = c.id;
      button.addEventListener("click", async () => {
        await run(() => api(`${base()}/calibrations/${c.id}/activate`, { method: "POST" }));
        await run(calibrations);
        await refresh();
      });
      action.appendChild(button);
    }
  }
  const select = $("calibration");
  for (const option of [...select.options]) if (/^\d+$/.test(option.value)) option.remove();
  for (const c of rows.filter((c) => c.status === "ready")) {
    select.add(new Option(`#${c.id} ${c.method} (v${c.version})`, String(c.id)));
  }
}

async function run(fn) {
  try {
    $("error").hidden = true;
    return await fn();
  } catch (error) {
    $("error").textContent = error.message;
    $("error").hidden = false;
    throw error;
  }
}

async function refresh() {
  document.body.dataset.ready = "";
  await run(() => Promise.all([reliability(), estimate(), timeseries(), histogram(), confusion(), labelShares(), selective()]));
  document.body.dataset.ready = "1";
}

async function loadVersions() {
  const detail = await api(base());
  const select = $("version");
  select.replaceChildren(new Option("all", ""));
  for (const v of detail.versions) select.add(new Option(`v${v.version}`, String(v.version)));
  const calibration = $("calibration").value;
  await calibrations();
  if ([...$("calibration").options].some((o) => o.value === calibration)) $("calibration").value = calibration;
}

async function start() {
  me = await api("/v1/me");
  $("key-form").hidden = true;
  const list = await api("/v1/classifiers");
  const select = $("classifier");
  select.replaceChildren(...list.map((c) => new Option(c.name, c.name)));
  const wanted = new URLSearchParams(location.search).get("classifier");
  if (wanted) select.value = wanted;
  if (!list.length) throw new Error("no classifier yet: create one and score a job first");
  await loadVersions();
  await refresh();
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("key").value.trim());
  run(start);
});
$("filters").addEventListener("submit", (event) => {
  event.preventDefault();
  run(refresh);
});
$("classifier").addEventListener("change", () => run(async () => { await loadVersions(); await refresh(); }));
run(start);
