// Draws the panels the Python side fetched from Prometheus, one uPlot chart each, in a dark,
// Grafana-like grid; window.renderPanels(spec) resolves once every chart has been painted.
"use strict";

const PALETTE = ["#73bf69", "#f2cc0c", "#8ab8ff", "#ff780a", "#f2495c", "#5794f2", "#b877d9", "#705da0",
  "#37872d", "#fade2a", "#447ebc", "#c15c17"];
const TEXT = "#ccccdc";
const GRID = "rgba(204, 204, 220, 0.09)";

// At most three significant digits for small numbers, no trailing zeros.
function trim(number) {
  const digits = Math.abs(number) >= 100 ? 0 : Math.abs(number) >= 10 ? 1 : 2;
  return String(Number(number.toFixed(digits)));
}

function si(value, suffix) {
  const steps = [[1e9, "G"], [1e6, "M"], [1e3, "k"]];
  for (const [size, prefix] of steps) {
    if (Math.abs(value) >= size) return trim(value / size) + " " + prefix + suffix;
  }
  return trim(value) + (suffix ? " " + suffix : "");
}

function seconds(value) {
  const abs = Math.abs(value);
  if (abs === 0) return "0 s";
  if (abs < 1e-3) return trim(value * 1e6) + " µs";
  if (abs < 1) return trim(value * 1e3) + " ms";
  if (abs < 60) return trim(value) + " s";
  if (abs < 3600) return trim(value / 60) + " min";
  return trim(value / 3600) + " h";
}

// The few Grafana unit names the dashboard uses; anything else is a plain number.
function format(unit, value) {
  if (value == null) return "";
  switch (unit) {
    case "s": return seconds(value);
    case "ms": return seconds(value / 1e3);
    case "percentunit": return trim(value * 100) + "%";
    case "percent": return trim(value) + "%";
    case "reqps": return si(value, "req/s");
    case "ops": case "opss": return si(value, "ops/s");
    case "opm": return si(value, "ops/min");
    case "bytes": case "decbytes": return si(value, "B");
    default: return si(value, "");
  }
}

function nextFrame() {
  return new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));
}

window.renderPanels = async function (spec) {
  const grid = document.getElementById("grid");
  grid.style.gridTemplateColumns = `repeat(${spec.columns}, ${spec.width + 16}px)`;
  spec.panels.forEach((panel, index) => {
    const box = document.createElement("div");
    box.className = "panel";
    box.id = `panel-${index}`;
    const title = document.createElement("div");
    title.className = "title";
    title.textContent = panel.title;
    box.appendChild(title);
    grid.appendChild(box);
    if (!panel.series.length) {
      const empty = document.createElement("div");
      empty.className = "nodata";
      empty.style.height = `${spec.height}px`;
      empty.textContent = "No data";
      box.appendChild(empty);
      return;
    }
    const axis = { stroke: TEXT, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 },
      font: "11px sans-serif" };
    const options = {
      width: spec.width,
      height: spec.height,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      cursor: { show: false },
      legend: { show: true, live: false },
      scales: { x: { time: true, range: () => [spec.start, spec.end] }, y: { range: (u, min, max) => [Math.min(0, min), max > min ? max : min + 1] } },
      axes: [axis, { ...axis, size: 64, values: (u, ticks) => ticks.map((v) => format(panel.unit, v)) }],
      series: [{}, ...panel.series.map((series, n) => ({
        label: series.label,
        stroke: PALETTE[n % PALETTE.length],
        fill: PALETTE[n % PALETTE.length] + "1a",
        width: 2,
        spanGaps: false,
      }))],
    };
    new uPlot(options, [panel.x, ...panel.series.map((series) => series.values)], box);
  });
  await nextFrame();
  return spec.panels.length;
};
