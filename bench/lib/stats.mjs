// stats.mjs: small statistics for benchmark figures. The machine is shared
// and noisy, so benchmarks report the median of several runs, with the spread
// next to it so a reader can tell a real difference from noise.

/** Median of a list of numbers (mean of the middle two for even counts); null when empty. */
export function median(values) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const mid = v.length >> 1;
  return v.length % 2 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Nearest-rank percentile (p in 0..100) of a list of numbers; null when empty. */
export function percentile(values, p) {
  const v = values.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return null;
  const rank = Math.min(v.length, Math.max(1, Math.ceil((p / 100) * v.length)));
  return v[rank - 1];
}

/** {median, min, max, spread_pct} of a list: spread is (max - min) / median in percent. */
export function summarize(values) {
  const v = values.filter((x) => Number.isFinite(x));
  if (v.length === 0) return { median: null, min: null, max: null, spread_pct: null };
  const m = median(v);
  const min = Math.min(...v);
  const max = Math.max(...v);
  return { median: m, min, max, spread_pct: m ? round(((max - min) / m) * 100, 1) : null };
}

/** a / b, or null when either is missing or b is zero. */
export function ratio(a, b) {
  if (!Number.isFinite(a) || !Number.isFinite(b) || b === 0) return null;
  return a / b;
}

/** Rounds to `digits` decimals; passes null/undefined through. */
export function round(x, digits = 2) {
  if (x === null || x === undefined || !Number.isFinite(x)) return x ?? null;
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}
