// The search view's two figures, drawn as SVG in the page (no library, nothing downloaded): the search curve
// (accuracy per evaluation with the best so far, report.png's first panel) and the per-layer widths of the best
// policy against the base model and the uniform policy (its second panel).

const SVG = "http://www.w3.org/2000/svg";
const W = 720;
const H = 260;
const PAD = { left: 52, right: 12, top: 14, bottom: 38 };

function node(parent, name, attributes = {}, text = null) {
  const element = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, String(value));
  if (text !== null) element.textContent = text;
  parent.append(element);
  return element;
}

function frame(container, label, height = H) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", label);
  container.replaceChildren(svg);
  return svg;
}

function axisY(svg, low, high, y, label) {
  node(svg, "line", { x1: PAD.left, y1: y(high), x2: PAD.left, y2: y(low), class: "axis" });
  for (let i = 0; i <= 4; i += 1) {
    const value = low + ((high - low) * i) / 4;
    node(svg, "line", { x1: PAD.left - 4, y1: y(value), x2: W - PAD.right, y2: y(value), class: "grid" });
    node(svg, "text", { x: PAD.left - 6, y: y(value) + 4, "text-anchor": "end", class: "tick" },
      high - low >= 10 ? value.toFixed(0) : value.toFixed(3));
  }
  const middle = (y(low) + y(high)) / 2;
  node(svg, "text", { x: 10, y: middle, class: "label", transform: `rotate(-90 10 ${middle})`,
    "text-anchor": "middle" }, label);
}

// rows: [{index, accuracy}] in evaluation order; bestIndex: the search's best evaluation (marked).
export function drawCurve(container, rows, bestIndex) {
  const svg = frame(container, "search curve: validation accuracy per evaluation, with the best so far");
  if (!rows.length) {
    node(svg, "text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "label" }, "no evaluation yet");
    return;
  }
  const accuracies = rows.map((r) => r.accuracy);
  let low = Math.min(...accuracies);
  let high = Math.max(...accuracies);
  if (high - low < 1e-6) { low -= 0.01; high += 0.01; }
  const last = Math.max(1, rows[rows.length - 1].index);
  const x = (i) => PAD.left + ((W - PAD.left - PAD.right) * i) / last;
  const y = (a) => H - PAD.bottom - ((H - PAD.top - PAD.bottom) * (a - low)) / (high - low);
  axisY(svg, low, high, y, "validation accuracy");
  node(svg, "line", { x1: PAD.left, y1: H - PAD.bottom, x2: W - PAD.right, y2: H - PAD.bottom, class: "axis" });
  for (const i of [0, Math.round(last / 2), last]) {
    node(svg, "text", { x: x(i), y: H - PAD.bottom + 16, "text-anchor": "middle", class: "tick" }, String(i));
  }
  node(svg, "text", { x: (W + PAD.left) / 2, y: H - 6, "text-anchor": "middle", class: "label" }, "evaluation");
  const points = node(svg, "g", { class: "points" });
  for (const r of rows) node(points, "circle", { cx: x(r.index), cy: y(r.accuracy), r: 2.5 });
  let best = -Infinity;
  const line = [];
  for (const r of rows) {
    if (r.accuracy > best) {
      if (line.length) line.push(`${x(r.index)},${y(best)}`); // a step: flat until the next best
      best = r.accuracy;
    }
    line.push(`${x(r.index)},${y(best)}`);
  }
  node(svg, "polyline", { points: line.join(" "), class: "best-line" });
  const marked = rows.find((r) => r.index === bestIndex);
  if (marked) node(svg, "circle", { cx: x(marked.index), cy: y(marked.accuracy), r: 5.5, class: "best-point" });
  const legend = node(svg, "g", { class: "legend" });
  node(legend, "circle", { cx: W - 250, cy: H - PAD.bottom - 30, r: 2.5, class: "legend-point" });
  node(legend, "text", { x: W - 242, y: H - PAD.bottom - 26, class: "tick" }, "each evaluation");
  node(legend, "line", { x1: W - 150, y1: H - PAD.bottom - 30, x2: W - 132, y2: H - PAD.bottom - 30,
    class: "best-line" });
  node(legend, "text", { x: W - 128, y: H - PAD.bottom - 26, class: "tick" }, "best so far");
}

// layers: [{name, base, best, best_keep, uniform, uniform_keep}]; widths in channels where the base is known,
// else keep ratios (the base is then 1).
export function drawWidths(container, layers) {
  const height = H + 40;
  const svg = frame(container, "per-layer widths: base model, best policy and uniform policy", height);
  if (!layers.length) {
    node(svg, "text", { x: W / 2, y: height / 2, "text-anchor": "middle", class: "label" }, "no policy yet");
    return;
  }
  const channels = layers.every((l) => l.base !== null && l.base !== undefined);
  const base = (l) => (channels ? l.base : 1);
  const best = (l) => (channels && l.best !== null ? l.best : l.best_keep * base(l));
  const uniform = (l) => (l.uniform !== null && channels ? l.uniform
    : l.uniform_keep !== null && l.uniform_keep !== undefined ? l.uniform_keep * base(l) : null);
  const high = Math.max(...layers.map(base));
  const bottom = height - PAD.bottom - 40;
  const top = PAD.top + 18; // the legend's row above the bars
  const y = (v) => bottom - ((bottom - top) * v) / high;
  axisY(svg, 0, high, y, channels ? "channels" : "keep ratio");
  const step = (W - PAD.left - PAD.right) / layers.length;
  const bar = Math.max(2, step * 0.7);
  layers.forEach((l, i) => {
    const left = PAD.left + i * step + (step - bar) / 2;
    const g = node(svg, "g", { class: "layer", "data-layer": l.name });
    node(g, "rect", { x: left, y: y(base(l)), width: bar, height: bottom - y(base(l)), class: "base-bar" });
    node(g, "rect", { x: left, y: y(best(l)), width: bar, height: bottom - y(best(l)), class: "best-bar" });
    const u = uniform(l);
    if (u !== null) node(g, "line", { x1: left - 2, y1: y(u), x2: left + bar + 2, y2: y(u), class: "uniform-mark" });
    node(g, "title", {}, `${l.name}: base ${channels ? l.base : "1"}, best ${channels && l.best !== null ? l.best
      : l.best_keep.toFixed(3)}${u !== null ? `, uniform ${channels ? l.uniform : u.toFixed(3)}` : ""}`);
    const cx = left + bar / 2;
    node(svg, "text", { x: cx, y: bottom + 10, "text-anchor": "end", class: "tick",
      transform: `rotate(-50 ${cx} ${bottom + 10})` }, l.name);
  });
  const legend = node(svg, "g", { class: "legend" });
  const items = [["base-bar", "base model"], ["best-bar", "best policy"], ["uniform-mark", "uniform policy"]];
  items.forEach(([kind, text], i) => {
    const x = W - 360 + i * 120;
    if (kind === "uniform-mark") node(legend, "line", { x1: x, y1: 9, x2: x + 14, y2: 9, class: kind });
    else node(legend, "rect", { x, y: 4, width: 14, height: 10, class: kind });
    node(legend, "text", { x: x + 18, y: 13, class: "tick" }, text);
  });
}
