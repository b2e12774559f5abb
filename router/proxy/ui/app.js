// costroute live page: GET /v1/router/summary every 5 s, drawn with plain DOM and SVG.
"use strict";
const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939"];
const $ = (id) => document.getElementById(id);
const usd = (x) => (x === null || x === undefined) ? "-" : "$" + x.toFixed(4);
const num = (x, nd) => (x === null || x === undefined) ? "-" : x.toFixed(nd);
let colorOf = {};

function key() {
  const m = location.hash.match(/key=([^&]+)/);
  if (m) { sessionStorage.setItem("costroute-key", decodeURIComponent(m[1])); history.replaceState(null, "", location.pathname); }
  return sessionStorage.getItem("costroute-key");
}

function color(name) {
  if (!(name in colorOf)) colorOf[name] = COLORS[Object.keys(colorOf).length % COLORS.length];
  return colorOf[name];
}

function text(id, value) { $(id).textContent = value; }

function drawTimeline(tl) {
  const svg = $("timeline"); svg.innerHTML = "";
  const series = Object.entries(tl.requests || {});
  if (!series.length) return;
  const n = series[0][1].length, totals = new Array(n).fill(0);
  series.forEach(([, v]) => v.forEach((x, i) => { totals[i] += x; }));
  const top = Math.max(1, ...totals), w = 600 / n;
  const base = new Array(n).fill(0);
  series.forEach(([name, v]) => {
    v.forEach((x, i) => {
      if (!x) return;
      const h = 115 * x / top, r = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      r.setAttribute("x", i * w); r.setAttribute("width", Math.max(w - 1, 1));
      r.setAttribute("y", 120 - base[i] - h); r.setAttribute("height", h);
      r.setAttribute("fill", color(name)); svg.appendChild(r); base[i] += h;
    });
  });
  $("timeline-legend").innerHTML = series.map(([name]) =>
    `<span><span class="swatch" style="background:${color(name)}"></span>${name}</span>`).join("");
}

function drawMix(s) {
  const rows = [];
  for (const [kind, mixes] of [["policy", s.mix_by_policy], ["key", s.mix_by_key]]) {
    for (const [name, mix] of Object.entries(mixes)) {
      const total = Object.values(mix).reduce((a, b) => a + b, 0) || 1;
      const parts = Object.entries(mix).map(([b, n]) =>
        `<span title="${b}: ${n}" style="width:${100 * n / total}%;background:${color(b)}"></span>`).join("");
      rows.push(`<div class="mixrow"><span class="name">${kind}: ${name}</span><span class="bar">${parts}</span></div>`);
    }
  }
  $("mix").innerHTML = rows.join("");
}

function render(s) {
  text("requests", s.requests); text("answered", s.answered);
  text("errors", Object.values(s.errors).reduce((a, b) => a + b, 0));
  text("spend", usd(s.spend_usd));
  const sv = s.savings;
  text("reference", sv.reference || "-");
  text("saved", sv.saved_usd === null ? "-" : `${usd(sv.saved_usd)} (${num(100 * (sv.saved_share || 0), 1)}%)`);
  text("fallbacks", s.requests_with_fallback);
  const body = $("backends").querySelector("tbody");
  body.innerHTML = Object.entries(s.backends).map(([b, d]) => `<tr data-backend="${b}">
    <td><span class="swatch" style="display:inline-block;background:${color(b)}"></span>${b}</td>
    <td class="answered">${d.requests}</td><td>${num(100 * d.requests / Math.max(1, s.answered), 1)}%</td>
    <td class="spend">${usd(d.spend_usd)}</td><td>${num(d.latency_p50_ms, 1)}</td><td>${num(d.latency_p99_ms, 1)}</td>
    <td>${num(d.feedback_mean, 3)} (${d.feedback_n})</td><td>${num(d.auto_reward_mean, 3)} (${d.auto_reward_n})</td></tr>`).join("");
  drawTimeline(s.timeline); drawMix(s);
  $("savings-text").textContent = sv.counterfactual_usd === null ? (sv.note || "") :
    `Measured spend ${usd(sv.actual_usd)} against an estimated ${usd(sv.counterfactual_usd)} for sending ` +
    `every answered request to ${sv.reference} at its per-token prices. Estimated quality (the policy's own ` +
    `estimates, ${sv.estimated_quality_n} decisions): served ${num(sv.estimated_quality_served, 3)}, ` +
    `${sv.reference} ${num(sv.estimated_quality_reference, 3)}.`;
  text("status", "updated " + new Date().toISOString().slice(11, 19) + " UTC, every 5 s");
  document.body.dataset.loaded = "1";
}

async function refresh() {
  const headers = {}; const k = key();
  if (k) headers["authorization"] = "Bearer " + k;
  try {
    const r = await fetch("/v1/router/summary?window=3600", { headers });
    if (r.status === 401) {
      $("main").hidden = true; $("login").hidden = false;
      text("status", "this gateway needs an API key");
      if (k) text("login-error", "that key was refused");
      return;
    }
    const s = await r.json();
    $("login").hidden = true; $("main").hidden = false; render(s);
  } catch (err) { text("status", "gateway unreachable: " + err); }
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault(); sessionStorage.setItem("costroute-key", $("key").value); refresh();
});
refresh();
setInterval(refresh, 5000);
