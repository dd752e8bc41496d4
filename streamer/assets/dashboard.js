// The live dashboard: polls /api/dashboard and /health every 2 s and draws
// what they say. No framework, no CDN: this file is compiled into the binary.
"use strict";

const REFRESH_MS = 2000;
const fmtInt = (s) => Number(s ?? 0).toLocaleString("en-US");
const fmtMoney = (s) => Number(s ?? 0).toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
const fmtTime = (iso) => (iso ? iso.replace("T", " ").replace("Z", "") : "");
const setText = (testid, text) => {
  const el = document.querySelector(`[data-testid="${testid}"]`);
  if (el) el.textContent = text;
};

function cell(tr, text, attrs = {}) {
  const td = document.createElement("td");
  td.textContent = text;
  for (const [k, v] of Object.entries(attrs)) td.setAttribute(k, v);
  tr.appendChild(td);
}

function svgEl(name, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// A chart of `series` ([{values, color, kind: "bar"|"line"}]) over `labels`.
function chart(svg, labels, series) {
  svg.replaceChildren();
  const W = 600, H = 200, L = 50, B = 22, T = 8;
  const max = Math.max(1, ...series.flatMap((s) => s.values));
  const y = (v) => T + (H - T - B) * (1 - v / max);
  for (const f of [0, 0.5, 1]) {
    svg.appendChild(svgEl("line", { x1: L, x2: W, y1: y(max * f), y2: y(max * f), stroke: "#e3e6ee" }));
    svg.appendChild(svgEl("text", { x: L - 4, y: y(max * f) + 3, "text-anchor": "end" }, Math.round(max * f).toLocaleString("en-US")));
  }
  if (labels.length === 0) {
    svg.appendChild(svgEl("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no batches in the last 15 minutes"));
    return;
  }
  const step = (W - L) / labels.length;
  labels.forEach((label, i) => {
    if (labels.length <= 8 || i % Math.ceil(labels.length / 8) === 0) {
      svg.appendChild(svgEl("text", { x: L + step * (i + 0.5), y: H - 6, "text-anchor": "middle" }, label.slice(11, 16)));
    }
  });
  for (const s of series) {
    if (s.kind === "bar") {
      const w = Math.min(step * 0.7, 36);
      s.values.forEach((v, i) => svg.appendChild(svgEl("rect", {
        x: L + step * (i + 0.5) - w / 2, width: w, y: y(v), height: Math.max(0, H - B - y(v)), fill: s.color,
      })));
    } else {
      const points = s.values.map((v, i) => `${L + step * (i + 0.5)},${y(v)}`).join(" ");
      svg.appendChild(svgEl("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 2 }));
      s.values.forEach((v, i) => svg.appendChild(svgEl("circle", { cx: L + step * (i + 0.5), cy: y(v), r: 3, fill: s.color })));
    }
  }
  series.filter((s) => s.name).forEach((s, i) => {
    svg.appendChild(svgEl("rect", { x: W - 70, y: T + 4 + i * 14, width: 10, height: 10, fill: s.color }));
    svg.appendChild(svgEl("text", { x: W - 56, y: T + 13 + i * 14 }, s.name));
  });
}

function render(d) {
  const t = d.totals || {};
  // Events, revenue, conversion and the windows come from the derived
  // tables: say so when they are behind (no streamer runs the analytics).
  const behind = Number(d.analytics?.batches_behind ?? 0);
  const notice = document.getElementById("analytics-behind");
  notice.hidden = behind === 0;
  notice.textContent = behind === 0 ? "" :
    `The analytics are ${fmtInt(behind)} batches (${fmtInt(d.analytics.seconds_behind)} s) behind the events table: ` +
    "events, revenue, conversion and the windows below leave those batches out until a streamer with ANALYTICS=true folds them in.";
  setText("kpi-events", fmtInt(t.events));
  setText("kpi-revenue", fmtMoney(t.revenue));
  setText("kpi-conversion", `${Number(t.conversion_pct ?? 0).toFixed(2)} %`);
  setText("kpi-files", fmtInt(t.files_loaded));
  setText("kpi-pending", fmtInt(d.stream?.files_pending));
  setText("kpi-rejected", fmtInt(t.rows_rejected));
  const width = d.window_seconds?.window_seconds;
  document.getElementById("window-width").textContent = width ? `(${width} s windows)` : "";

  const minutes = d.minutes || [];
  const labels = minutes.map((m) => m.minute);
  chart(document.getElementById("throughput"), labels, [{ kind: "bar", color: "#2f6fde", values: minutes.map((m) => Number(m.rows)) }]);
  chart(document.getElementById("latency"), labels, [
    { kind: "line", name: "p50", color: "#2f6fde", values: minutes.map((m) => Number(m.latency_p50_ms)) },
    { kind: "line", name: "p95", color: "#e0762f", values: minutes.map((m) => Number(m.latency_p95_ms)) },
  ]);

  const wbody = document.querySelector("#windows tbody");
  wbody.replaceChildren();
  let previous = null;
  for (const w of d.windows || []) {
    const tr = document.createElement("tr");
    tr.dataset.window = w.window_start;
    tr.dataset.category = w.product_category;
    if (w.window_start !== previous) tr.className = "first";
    previous = w.window_start;
    cell(tr, fmtTime(w.window_start));
    cell(tr, w.product_category);
    cell(tr, fmtInt(w.views), { "data-col": "views" });
    cell(tr, fmtInt(w.purchases), { "data-col": "purchases" });
    cell(tr, fmtInt(w.users), { "data-col": "users" });
    cell(tr, fmtMoney(w.revenue), { "data-col": "revenue" });
    cell(tr, `${Number(w.conversion_pct).toFixed(2)} %`, { "data-col": "conversion" });
    wbody.appendChild(tr);
  }

  const bbody = document.querySelector("#batches tbody");
  bbody.replaceChildren();
  for (const b of d.batches || []) {
    const tr = document.createElement("tr");
    tr.dataset.batch = b.batch_id;
    cell(tr, b.batch_id);
    cell(tr, fmtTime(b.committed_at));
    cell(tr, fmtInt(b.files), { "data-col": "files" });
    cell(tr, fmtInt(b.rows_read), { "data-col": "rows_read" });
    cell(tr, fmtInt(b.inserted), { "data-col": "inserted" });
    cell(tr, fmtInt(b.updated), { "data-col": "updated" });
    cell(tr, fmtInt(b.duplicates), { "data-col": "duplicates" });
    cell(tr, fmtInt(b.rejected), { "data-col": "rejected" });
    cell(tr, `${fmtInt(b.duration_ms)} ms`, { "data-col": "duration" });
    bbody.appendChild(tr);
  }
}

async function refresh() {
  try {
    const [data, health] = await Promise.all([
      fetch("/api/dashboard", { cache: "no-store" }).then((r) => r.json()),
      fetch("/health", { cache: "no-store" }).then((r) => r.json()),
    ]);
    const badge = document.getElementById("health");
    badge.textContent = health.status === "ok" ? "healthy" : (health.reasons || []).join("; ");
    badge.className = `badge ${health.status === "ok" ? "ok" : "bad"}`;
    if (data.error) throw new Error(data.error);
    render(data);
    setText("updated", `updated ${new Date().toISOString().slice(11, 19)} UTC`);
    document.body.dataset.loaded = "true";
  } catch (e) {
    setText("updated", `cannot refresh: ${e.message}`);
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
