// stars-guard live dashboard: polls <base>/data every second and redraws hand-made SVG charts.
// Plain JavaScript, no libraries and no external assets, so it works on an offline host.
(function () {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const POLL_MS = 1000;
  const ROLLING_S = 10;
  const base = document.body.dataset.base || "/dashboard";
  const state = { window: 300, timer: null, lastOk: 0, seq: 0, last: null };

  // Formatting -----------------------------------------------------------------------------------

  const fmtInt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
  const fmtPct = (x, digits = 1) => (x === null || x === undefined ? "–" : (100 * x).toFixed(digits) + "%");
  const fmtNum = (x, digits = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
  const pad = (n) => String(n).padStart(2, "0");
  const fmtClock = (epochS) => {
    const d = new Date(epochS * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };

  // SVG helpers ----------------------------------------------------------------------------------

  function el(tag, attrs, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function tip(node, text) {
    node.appendChild(el("title", {}, text));
    return node;
  }

  // 1, 2, 5 x 10^k at or above `value`: axis maxima that read well.
  function niceMax(value) {
    if (!(value > 0)) return 1;
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 5, 10]) if (value <= step * power) return step * power;
    return 10 * power;
  }

  // Gridline count for a count axis, so every label is a whole number.
  function countTicks(max) {
    for (const t of [4, 5, 3, 2]) if (max % t === 0) return t;
    return 1;
  }

  // Clears an <svg>, sizes it to its box and returns the plot area with y-axis gridlines drawn.
  function frame(svg, opts) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    const width = Math.max(svg.clientWidth || svg.parentNode.clientWidth || 400, 200);
    const height = Math.max(svg.clientHeight || 200, 120);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    const m = { left: opts.left || 44, right: opts.right || 12, top: 10, bottom: 24 };
    const plot = {
      svg,
      x0: m.left,
      x1: width - m.right,
      y0: height - m.bottom,
      y1: m.top,
      yMax: opts.yMax,
      width,
      height,
    };
    plot.y = (v) => plot.y0 - (plot.y0 - plot.y1) * (v / plot.yMax);
    const ticks = opts.ticks || 4;
    for (let i = 0; i <= ticks; i += 1) {
      const v = (plot.yMax * i) / ticks;
      const y = plot.y(v);
      svg.appendChild(el("line", { class: i === 0 ? "axis" : "gridline", x1: plot.x0, x2: plot.x1, y1: y, y2: y }));
      svg.appendChild(el("text", { x: plot.x0 - 6, y: y + 4, "text-anchor": "end" }, opts.yFormat(v)));
    }
    return plot;
  }

  function emptyNote(plot, text) {
    plot.svg.appendChild(
      el("text", { class: "empty-note", x: (plot.x0 + plot.x1) / 2, y: (plot.y0 + plot.y1) / 2, "text-anchor": "middle" }, text)
    );
  }

  // Time axis: the series' step starts; labels at about five evenly spaced points.
  function timeAxis(plot, ts, step) {
    const n = ts.length;
    const slot = (plot.x1 - plot.x0) / Math.max(n, 1);
    const x = (i) => plot.x0 + slot * (i + 0.5);
    const every = Math.max(1, Math.ceil(n / 6));
    for (let i = n - 1; i >= 0; i -= every) {
      plot.svg.appendChild(el("text", { x: x(i), y: plot.y0 + 16, "text-anchor": "middle" }, fmtClock(ts[i])));
    }
    return { x, slot, step };
  }

  // A polyline that breaks where the value is null (no candidates judged in that step).
  function line(plot, xs, values, cls) {
    let d = "";
    let open = false;
    const lone = [];
    values.forEach((v, i) => {
      if (v === null || v === undefined) {
        open = false;
        return;
      }
      const next = values[i + 1];
      const prev = values[i - 1];
      if ((prev === null || prev === undefined) && (next === null || next === undefined)) lone.push(i);
      d += `${open ? "L" : "M"}${xs.x(i).toFixed(1)},${plot.y(v).toFixed(1)}`;
      open = true;
    });
    if (d) plot.svg.appendChild(el("path", { class: `series-line ${cls}`, d }));
    return lone;
  }

  function bar(plot, x, width, v0, v1, cls, title) {
    const top = plot.y(v1);
    const height = Math.max(plot.y(v0) - top, v1 > v0 ? 1 : 0);
    const rect = el("rect", { class: `bar ${cls}`, x, y: top, width: Math.max(width, 1), height, rx: width > 6 ? 2 : 0 });
    plot.svg.appendChild(title ? tip(rect, title) : rect);
  }

  // Charts ---------------------------------------------------------------------------------------

  // Rejected / judged over the trailing `span` steps; null until something was judged in them.
  function rollingRate(judged, rejected, span) {
    let j = 0;
    let r = 0;
    return judged.map((n, i) => {
      j += n;
      r += rejected[i];
      if (i >= span) {
        j -= judged[i - span];
        r -= rejected[i - span];
      }
      return j > 0 ? r / j : null;
    });
  }

  function drawRejection(svg, data) {
    const s = data.series;
    const plot = frame(svg, { yMax: 1, yFormat: (v) => fmtPct(v, 0) });
    const xs = timeAxis(plot, s.t, data.step_s);
    const maxJudged = Math.max(0, ...s.judged);
    if (maxJudged > 0) {
      // Volume bars on their own scale, drawn under the line and kept low so they read as context.
      const scale = 0.45 / niceMax(maxJudged);
      s.judged.forEach((n, i) => {
        if (n > 0) {
          const w = xs.slot * 0.7;
          bar(plot, xs.x(i) - w / 2, w, 0, n * scale, "volume", `${fmtClock(s.t[i])}: ${n} judged, ${s.rejected[i]} rejected`);
        }
      });
    }
    const avg = data.window.rejection_rate;
    if (avg !== null && avg !== undefined) {
      svg.appendChild(el("line", { class: "average", x1: plot.x0, x2: plot.x1, y1: plot.y(avg), y2: plot.y(avg) }));
    }
    // Each step's own rate as a faint dot; the line is a trailing rolling rate (about 10 s), which
    // a single step's handful of candidates would make too jumpy to read.
    s.rejection_rate.forEach((rate, i) => {
      if (rate === null || rate === undefined) return;
      const dot = el("circle", { class: "step-dot", cx: xs.x(i), cy: plot.y(rate), r: 2.5 });
      svg.appendChild(tip(dot, `${fmtClock(s.t[i])}: ${s.rejected[i]} of ${s.judged[i]} rejected (${fmtPct(rate)})`));
    });
    const rolling = rollingRate(s.judged, s.rejected, Math.max(1, Math.round(ROLLING_S / data.step_s)));
    const lone = line(plot, xs, rolling, "rate");
    lone.forEach((i) => svg.appendChild(el("circle", { class: "rate-dot", cx: xs.x(i), cy: plot.y(rolling[i]), r: 3 })));
    if (maxJudged === 0) emptyNote(plot, "no candidates judged in this window");
  }

  function drawAttempts(svg, data) {
    const hist = data.window.attempts_histogram;
    const keys = Object.keys(hist).map(Number).sort((a, b) => a - b);
    const top = keys.length ? keys[keys.length - 1] : 4;
    const labels = [];
    for (let k = 1; k <= Math.max(top, 4); k += 1) labels.push(k);
    const counts = labels.map((k) => hist[String(k)] || 0);
    const total = counts.reduce((a, b) => a + b, 0);
    const yMax = niceMax(1.15 * Math.max(...counts));
    const plot = frame(svg, { yMax, ticks: countTicks(yMax), yFormat: (v) => fmtInt(v) });
    const slot = (plot.x1 - plot.x0) / labels.length;
    labels.forEach((k, i) => {
      const x = plot.x0 + slot * i;
      const w = Math.min(slot * 0.7, 64);
      const cx = x + slot / 2;
      svg.appendChild(el("text", { x: cx, y: plot.y0 + 16, "text-anchor": "middle" }, String(k)));
      if (counts[i] > 0) {
        bar(plot, cx - w / 2, w, 0, counts[i], "attempts", `${counts[i]} segments took ${k} attempt${k > 1 ? "s" : ""}`);
        svg.appendChild(el("text", { class: "bar-label", x: cx, y: plot.y(counts[i]) - 4, "text-anchor": "middle" }, fmtPct(counts[i] / total, 0)));
      }
    });
    document.getElementById("attempts-meta").textContent = total
      ? `${fmtInt(total)} segments · mean ${fmtNum(data.window.mean_attempts)} attempts`
      : "";
    if (!total) emptyNote(plot, "no segments settled in this window");
  }

  function drawRewards(svg, data) {
    const h = data.window.reward_histogram;
    const bins = h.accepted.length;
    const stacked = h.accepted.map((a, i) => a + h.rejected[i]);
    const yMax = niceMax(1.1 * Math.max(0, ...stacked));
    const plot = frame(svg, { yMax, ticks: countTicks(yMax), yFormat: (v) => fmtInt(v) });
    const slot = (plot.x1 - plot.x0) / bins;
    for (let i = 0; i < bins; i += 1) {
      const x = plot.x0 + slot * i + 1;
      const w = slot - 2;
      const range = `reward ${fmtNum(h.edges[i])} to ${fmtNum(h.edges[i + 1])}`;
      if (h.rejected[i]) bar(plot, x, w, 0, h.rejected[i], "rejected", `${range}: ${h.rejected[i]} rejected`);
      if (h.accepted[i]) bar(plot, x, w, h.rejected[i], stacked[i], "accepted", `${range}: ${h.accepted[i]} accepted`);
    }
    const every = Math.max(1, Math.round(bins / 5));
    for (let i = 0; i <= bins; i += every) {
      svg.appendChild(el("text", { x: plot.x0 + slot * i, y: plot.y0 + 16, "text-anchor": "middle" }, fmtNum(h.edges[i])));
    }
    if (!h.count) emptyNote(plot, "no rewards in this window");
  }

  function drawRequests(svg, data) {
    const s = data.series;
    const top = niceMax(1.2 * Math.max(1, ...s.finished, ...s.in_flight));
    const plot = frame(svg, { yMax: top, ticks: countTicks(top), yFormat: (v) => fmtInt(v) });
    const xs = timeAxis(plot, s.t, data.step_s);
    s.finished.forEach((n, i) => {
      if (n > 0) {
        const w = xs.slot * 0.7;
        bar(plot, xs.x(i) - w / 2, w, 0, n, "finished", `${fmtClock(s.t[i])}: ${n} finished`);
      }
    });
    // In flight is a level, so draw it as steps rather than a slope between samples.
    let d = "";
    s.in_flight.forEach((v, i) => {
      const left = xs.x(i) - xs.slot / 2;
      d += `${i ? "L" : "M"}${left.toFixed(1)},${plot.y(v).toFixed(1)}L${(left + xs.slot).toFixed(1)},${plot.y(v).toFixed(1)}`;
    });
    if (d) svg.appendChild(el("path", { class: "series-line flight", d }));

    const chips = document.getElementById("outcomes");
    chips.replaceChildren();
    const outcomes = Object.entries(data.window.requests_by_outcome);
    if (!outcomes.length) {
      const li = document.createElement("li");
      li.textContent = "no requests finished in this window";
      chips.appendChild(li);
    }
    for (const [outcome, count] of outcomes) {
      const li = document.createElement("li");
      li.className = outcome;
      li.append(outcome);
      const b = document.createElement("b");
      b.textContent = fmtInt(count);
      li.appendChild(b);
      chips.appendChild(li);
    }
  }

  function drawRefusals(svg, data) {
    const s = data.series;
    const top = niceMax(1.2 * Math.max(1, ...s.refusals));
    const plot = frame(svg, { yMax: top, ticks: countTicks(top), yFormat: (v) => fmtInt(v) });
    const xs = timeAxis(plot, s.t, data.step_s);
    s.refusals.forEach((n, i) => {
      if (n > 0) {
        const w = Math.max(xs.slot * 0.7, 3);
        bar(plot, xs.x(i) - w / 2, w, 0, n, "refusal", `${fmtClock(s.t[i])}: ${n} refused`);
      }
    });
    const w = data.window;
    document.getElementById("refusals-meta").textContent = `${fmtInt(w.refusals)} in window · ${fmtPct(w.refusal_rate)} of finished`;
    if (!w.refusals) emptyNote(plot, "no refusals in this window");
  }

  function drawRecent(totals) {
    const body = document.querySelector("#recent tbody");
    const rows = (totals.recent || []).slice(-10).reverse();
    body.replaceChildren();
    if (!rows.length) {
      const tr = document.createElement("tr");
      tr.className = "empty";
      const td = document.createElement("td");
      td.colSpan = 9;
      td.textContent = "no finished requests yet";
      tr.appendChild(td);
      body.appendChild(tr);
      return;
    }
    for (const r of rows) {
      const tr = document.createElement("tr");
      const cells = [
        [`#${String(r.run_id).slice(0, 8)}`, "mono"],
        [null, "", r.finish_reason],
        [fmtInt(r.segments), "num"],
        [fmtInt(r.candidates_sampled), "num"],
        [fmtInt(r.candidates_rejected), "num"],
        [fmtPct(r.rejection_rate, 0), "num"],
        [fmtNum(r.mean_accepted_reward, 3), "num"],
        [fmtInt(r.tokens_emitted), "num"],
        [`${fmtNum(r.latency_s, 1)} s`, "num"],
      ];
      for (const [text, cls, badge] of cells) {
        const td = document.createElement("td");
        if (cls) td.className = cls;
        if (badge !== undefined) {
          const span = document.createElement("span");
          span.className = `badge ${badge}`;
          span.textContent = badge;
          td.appendChild(span);
        } else {
          td.textContent = text;
        }
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  // Headline figures: the text for people, data-* attributes with exact values for scripts.
  function setFigure(id, text, attrs) {
    const node = document.getElementById(id);
    node.textContent = text;
    for (const [key, value] of Object.entries(attrs || {})) node.dataset[key] = value === null ? "" : String(value);
  }

  function renderHeadline(data) {
    const h = data.headline;
    setFigure("rejection-rate", fmtPct(h.rejection_rate), {
      value: h.rejection_rate,
      judged: h.candidates_judged,
      rejected: h.candidates_rejected,
    });
    document.getElementById("rejection-detail").textContent =
      `${fmtInt(h.candidates_rejected)} of ${fmtInt(h.candidates_judged)} candidates`;
    setFigure("in-flight", fmtInt(h.requests_in_flight), { value: h.requests_in_flight });
    setFigure("requests-finished", fmtInt(h.requests_finished), { value: h.requests_finished });
    const outcomes = Object.entries(h.requests_by_outcome).map(([k, v]) => `${k}\u00a0${fmtInt(v)}`);
    document.getElementById("requests-detail").textContent = outcomes.length ? outcomes.join(" · ") : "none yet";
    setFigure("refusals", fmtInt(h.refusals), { value: h.refusals, rate: h.refusal_rate });
    document.getElementById("refusals-detail").textContent = `${fmtPct(h.refusal_rate)} of finished`;
    setFigure("mean-attempts", fmtNum(h.mean_attempts_per_segment), { value: h.mean_attempts_per_segment });
    setFigure("tokens", fmtInt(h.tokens_emitted), { value: h.tokens_emitted });
    document.getElementById("tokens-detail").textContent = h.tokens_sampled
      ? `of ${fmtInt(h.tokens_sampled)} sampled (${fmtPct(h.tokens_emitted / h.tokens_sampled, 0)})`
      : "none sampled yet";
    document.getElementById("window-rate").textContent = fmtPct(data.window.rejection_rate);
  }

  function render(data) {
    renderHeadline(data);
    drawRejection(document.getElementById("chart-rejection-rate"), data);
    drawAttempts(document.getElementById("chart-attempts"), data);
    drawRewards(document.getElementById("chart-rewards"), data);
    drawRequests(document.getElementById("chart-requests"), data);
    drawRefusals(document.getElementById("chart-refusals"), data);
    drawRecent(data.totals);
    document.body.dataset.updated = String(data.generated_at);
  }

  function setStatus(kind, text) {
    const node = document.getElementById("status");
    node.dataset.state = kind;
    document.getElementById("status-text").textContent = text;
  }

  // Polling: one request at a time; the next is scheduled only when the last has settled, and a
  // reply that a newer poll overtook (the window was changed meanwhile) is dropped.
  async function poll() {
    const seq = ++state.seq;
    try {
      const response = await fetch(`${base}/data?window=${state.window}`, { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      if (seq !== state.seq) return;
      state.last = data;
      render(data);
      state.lastOk = Date.now();
      setStatus("live", `live · ${fmtClock(data.generated_at)}`);
    } catch (error) {
      if (seq !== state.seq) return;
      const since = state.lastOk ? ` · last data ${fmtClock(state.lastOk / 1000)}` : "";
      setStatus("stale", `disconnected${since}`);
    } finally {
      if (seq === state.seq) state.timer = window.setTimeout(poll, POLL_MS);
    }
  }

  function init() {
    // ?window=60|300|900 picks the initial range (a link can share a view).
    const asked = Number(new URLSearchParams(window.location.search).get("window"));
    const buttons = Array.from(document.querySelectorAll(".range button"));
    const preset = buttons.find((button) => Number(button.dataset.window) === asked);
    if (preset) {
      state.window = asked;
      for (const button of buttons) button.classList.toggle("active", button === preset);
    }
    for (const button of document.querySelectorAll(".range button")) {
      button.addEventListener("click", () => {
        state.window = Number(button.dataset.window);
        for (const other of document.querySelectorAll(".range button")) other.classList.toggle("active", other === button);
        window.clearTimeout(state.timer);
        poll();
      });
    }
    window.addEventListener("resize", () => {
      if (state.last) render(state.last);
    });
    poll();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init);
  else init();
})();
