// rounds.mjs: median of interleaved runs. On a shared, noisy machine a
// benchmark that measures Meridian for a minute and then its peer for a
// minute compares two different machines; alternating short runs (A B, B A,
// A B, ...) makes drift and neighbours' bursts hit both sides equally, and
// the median of the runs drops the odd outlier.

import { median, ratio, round, summarize } from './stats.mjs';

/**
 * Runs every contender once per round, alternating the order each round
 * (round 0: as given; round 1: reversed; ...). contenders: [{name, run(round)
 * -> result object}]. onRun(name, round, result) is called after each run
 * (progress logging). Returns {name: [result, ...]} in round order.
 */
export async function interleave({ rounds, contenders, onRun = () => {} }) {
  const out = Object.fromEntries(contenders.map((c) => [c.name, []]));
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? contenders : [...contenders].reverse();
    for (const c of order) {
      const res = await c.run(r);
      res.round = r;
      out[c.name].push(res);
      onRun(c.name, r, res);
    }
  }
  for (const k of Object.keys(out)) out[k].sort((a, b) => a.round - b.round);
  return out;
}

/**
 * Medians of the given numeric fields over runs: {field_median: x, ...} plus
 * `${field}_spread_pct` for each, so noise is visible next to the figure.
 * fields: {outputName: (run) => number}.
 */
export function medians(runs, fields, digits = 3) {
  const out = {};
  for (const [name, get] of Object.entries(fields)) {
    const s = summarize(runs.map(get));
    out[name] = round(s.median, digits);
    out[`${name}_spread_pct`] = s.spread_pct;
  }
  return out;
}

/**
 * Median of per-round ratios a/b (runs matched by round): less sensitive to
 * drift between rounds than the ratio of the two medians.
 */
export function pairedRatio(runsA, runsB, get) {
  const byRound = new Map(runsB.map((r) => [r.round, r]));
  const rs = runsA.map((a) => (byRound.has(a.round) ? ratio(get(a), get(byRound.get(a.round))) : null));
  return median(rs.filter((x) => x !== null));
}
