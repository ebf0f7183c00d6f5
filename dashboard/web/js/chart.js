// A thin wrapper over uPlot: a time-series chart that fits its container,
// takes its colours from the page's CSS (light or dark, redrawn when the
// scheme changes), and redraws at most once per animation frame however
// often data arrives.

import { frame } from './util.js';

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
const PALETTE = ['#2563eb', '#16a34a', '#d97706', '#db2777', '#7c3aed', '#0891b2'];
const dark = window.matchMedia('(prefers-color-scheme: dark)');

// timeChart draws series (each {label, color?}) into el. data is uPlot's
// [[t...], [y...], ...] with t in Unix seconds. With a window (seconds)
// the x axis ends now and shows at most the last window seconds; without
// one it fits the data. Either way it spans at least a minute.
export function timeChart(el, series, data, { height = 180, minMs = 250, window: span = 0 } = {}) {
  const options = () => {
    const fg = css('--muted'), grid = css('--line');
    const axis = { stroke: fg, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    return {
      width: Math.max(el.clientWidth, 200),
      height,
      legend: { show: series.length > 1 },
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true, range: (_u, min, max) => {
        if (span) {
          // The last span seconds, or less while the data is younger: at
          // least a minute.
          const now = Math.max(max || 0, Date.now() / 1000);
          return [Math.max(now - span, Math.min(min ?? now, now - 60)), now];
        }
        if (min == null || max == null) { const now = Date.now() / 1000; return [now - 60, now]; }
        return max - min < 60 ? [max - 60, max] : [min, max];
      } } },
      axes: [axis, { ...axis, size: 56 }],
      series: [{}, ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || PALETTE[i % PALETTE.length],
        width: 2,
        fill: series.length === 1 ? (s.color || PALETTE[0]) + '22' : undefined,
        points: { show: false },
        spanGaps: true,
      }))],
    };
  };
  let pending = data;
  let plot = null;
  const build = () => {
    if (plot) plot.destroy();
    plot = new window.uPlot(options(), pending, el);
    el.uplot = plot; // for the browser tests
  };
  build();
  const ro = new ResizeObserver(() => plot.setSize({ width: Math.max(el.clientWidth, 200), height }));
  ro.observe(el);
  dark.addEventListener('change', build);
  const redraw = frame(() => plot.setData(pending), minMs);
  return {
    get plot() { return plot; },
    set(d) { pending = d; redraw(); },
    destroy() { redraw.cancel(); ro.disconnect(); dark.removeEventListener('change', build); plot.destroy(); },
  };
}
