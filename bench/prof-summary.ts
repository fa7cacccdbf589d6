/**
 * Summarises V8 .cpuprofile files: top functions by self time.
 *
 *   node dist/bench/prof-summary.js <file.cpuprofile>... [--top 25]
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';

interface Node {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}
interface Profile {
  nodes: Node[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const args = process.argv.slice(2);
const topIdx = args.indexOf('--top');
const top = topIdx >= 0 ? Number(args[topIdx + 1]) : 25;
const files = args.filter((a, i) => a.endsWith('.cpuprofile') && i !== topIdx + 1);
for (const file of files) {
  const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
  const byId = new Map(p.nodes.map((n) => [n.id, n]));
  const self = new Map<string, number>();
  let total = 0;
  let idle = 0;
  for (let i = 0; i < p.samples.length; i++) {
    const n = byId.get(p.samples[i])!;
    const dt = p.timeDeltas[i + 1] ?? 0;
    total += dt;
    const f = n.callFrame;
    if (f.functionName === '(idle)') idle += dt;
    const key = `${f.functionName || '(anonymous)'} ${f.url ? path.basename(f.url) + ':' + (f.lineNumber + 1) : ''}`;
    self.set(key, (self.get(key) ?? 0) + dt);
  }
  console.log(`\n${path.basename(file)}: ${(total / 1000).toFixed(0)} ms sampled, ${((total - idle) / 1000).toFixed(0)} ms busy`);
  const rows = [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, top);
  for (const [k, v] of rows) console.log(`  ${(v / 1000).toFixed(1).padStart(8)} ms  ${((100 * v) / total).toFixed(1).padStart(5)}%  ${k}`);
}
