// Prints the gzipped size of every JavaScript and CSS file in dist/ and checks the
// budget: the JavaScript index.html loads at start (entry + modulepreloads) must stay
// at or under 100 KB gzipped. The importer (lazy chunk and custody-importer.js) is
// not initial.
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { gzipSync } from 'node:zlib';

const dist = new URL('../dist/', import.meta.url).pathname;
const BUDGET = 100 * 1024;

function walk(dir) {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? walk(path) : [path];
  });
}

const html = readFileSync(join(dist, 'index.html'), 'utf8');
const initial = new Set(
  [...html.matchAll(/<(?:script[^>]*\ssrc|link[^>]*rel="modulepreload"[^>]*\shref)="\/?([^"]+\.js)"/g)].map((m) => m[1]),
);
const rows = walk(dist)
  .filter((p) => /\.(js|css)$/.test(p))
  .map((path) => {
    const data = readFileSync(path);
    const name = relative(dist, path);
    return { name, raw: data.length, gzip: gzipSync(data, { level: 9 }).length, initial: initial.has(name) };
  })
  .sort((a, b) => Number(b.initial) - Number(a.initial) || b.gzip - a.gzip);

const kb = (n) => (n / 1024).toFixed(1).padStart(7) + ' KB';
console.log('\nconsole bundle sizes (gzip -9):');
console.log('  ' + 'file'.padEnd(48) + 'raw'.padStart(10) + 'gzip'.padStart(10) + '  loaded');
for (const r of rows) {
  const when = r.initial ? 'initial' : r.name === 'custody-importer.js' ? 'embed' : r.name.endsWith('.css') ? 'initial css' : 'lazy';
  console.log('  ' + r.name.padEnd(48) + kb(r.raw) + ' ' + kb(r.gzip) + '  ' + when);
}
const total = rows.filter((r) => r.initial).reduce((sum, r) => sum + r.gzip, 0);
console.log(`\ninitial JavaScript: ${kb(total).trim()} gzipped (budget ${BUDGET / 1024} KB, importer excluded)`);
if (!initial.size) {
  console.error('sizes: found no <script src> in dist/index.html');
  process.exit(1);
}
if (total > BUDGET) {
  console.error('sizes: over budget');
  process.exit(1);
}
