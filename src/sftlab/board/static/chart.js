// A small line chart on <canvas>: axes with a few ticks, one coloured line (and dots) per series, a legend.
// drawChart(canvas, [{label, points: [[x, y], ...]}], {logY: false}) -- no external library, works offline.
"use strict";
const CHART_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b"];

function niceNumber(value) {
  if (value === 0 || !isFinite(value)) return "0";
  const abs = Math.abs(value);
  if (abs >= 1000) return value.toFixed(0);
  if (abs >= 1) return value.toPrecision(4).replace(/\.?0+$/, "");
  return value.toPrecision(3);
}

function drawChart(canvas, series, options = {}) {
  const ctx = canvas.getContext("2d");
  const width = canvas.width, height = canvas.height;
  const pad = {left: 58, right: 12, top: 10, bottom: 42};
  ctx.clearRect(0, 0, width, height);
  ctx.font = "11px sans-serif";
  const all = series.flatMap(s => s.points).filter(p => Number.isFinite(p[1]));
  canvas.dataset.points = String(all.length);
  if (!all.length) { ctx.fillStyle = "#888"; ctx.fillText("-", width / 2, height / 2); return; }
  let [x0, x1] = [Math.min(...all.map(p => p[0])), Math.max(...all.map(p => p[0]))];
  let [y0, y1] = [Math.min(...all.map(p => p[1])), Math.max(...all.map(p => p[1]))];
  if (x0 === x1) { x0 -= 1; x1 += 1; }
  if (y0 === y1) { const d = Math.abs(y0) * 0.05 || 1; y0 -= d; y1 += d; }
  const sx = x => pad.left + (x - x0) / (x1 - x0) * (width - pad.left - pad.right);
  const sy = y => height - pad.bottom - (y - y0) / (y1 - y0) * (height - pad.top - pad.bottom);
  ctx.strokeStyle = "#bbb"; ctx.fillStyle = "#444"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(pad.left, pad.top); ctx.lineTo(pad.left, height - pad.bottom);
  ctx.lineTo(width - pad.right, height - pad.bottom); ctx.stroke();
  const integerX = all.every(p => Number.isInteger(p[0]));  // steps: label whole numbers only
  let lastX = null;
  for (let i = 0; i <= 4; i++) {
    const y = y0 + (y1 - y0) * i / 4;
    let x = x0 + (x1 - x0) * i / 4;
    ctx.fillText(niceNumber(y), 4, sy(y) + 4);
    if (integerX) x = Math.round(x);
    if (x === lastX) continue;
    lastX = x;
    ctx.fillText(niceNumber(x), sx(x) - 8, height - pad.bottom + 14);
  }
  series.forEach((s, index) => {
    const colour = s.colour || CHART_COLOURS[index % CHART_COLOURS.length];
    const points = s.points.filter(p => Number.isFinite(p[1]));
    ctx.strokeStyle = colour; ctx.fillStyle = colour; ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo(sx(p[0]), sy(p[1])) : ctx.moveTo(sx(p[0]), sy(p[1]))));
    ctx.stroke();
    points.forEach(p => { ctx.beginPath(); ctx.arc(sx(p[0]), sy(p[1]), 2.5, 0, 2 * Math.PI); ctx.fill(); });
    const lx = pad.left + 8 + index * 130;
    ctx.fillRect(lx, height - 14, 12, 4);
    ctx.fillStyle = "#333"; ctx.fillText(s.label, lx + 16, height - 8);
  });
}
