import AxeBuilder from '@axe-core/playwright';
import { expect, type Page } from '@playwright/test';
import { mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

export const SHOTS = resolve(import.meta.dirname, '../../docs/console');
mkdirSync(SHOTS, { recursive: true });

/** API answers the console expects and handles (Chromium logs every 4xx fetch). */
const EXPECTED_FAILURES: [number, RegExp][] = [
  [404, /\/export\/settings$/],
  [409, /\/installations\/[^/]+\/claim$/],
  // embed.spec.ts: a lifetime over 60 minutes; the token from a foreign origin; a
  // revoked session's token.
  [400, /\/import-sessions$/],
  [403, /\/embed\/imports\/[^/]+$/],
  [401, /\/embed\/imports$/],
  // privacy.spec.ts: wrong verification codes (422), the third one locks (409).
  [422, /\/privacy\/requests\/[^/]+\/verify$/],
  [409, /\/privacy\/requests\/[^/]+\/verify$/],
  // privacy.spec.ts: a rectification whose "correction" is the current value.
  [400, /\/privacy\/rectify$/],
  // exports.spec.ts: the local stack cannot assume a customer's S3 role (422
  // destination-refused, field destination.role_arn), on save and on test.
  [422, /\/export\/settings$/],
  [422, /\/export\/destination\/test$/],
];

/**
 * Fails the test on any console error, uncaught exception or CSP violation the
 * page reports. Call `check()` at the end (and between steps).
 */
export function watch(page: Page) {
  const problems: string[] = [];
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    const url = msg.location().url ?? '';
    const m = /status of (\d{3})/.exec(text);
    if (m && EXPECTED_FAILURES.some(([status, re]) => status === Number(m[1]) && re.test(url))) return;
    problems.push(`console error: ${text} ${url}`);
  });
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  // Reported by the browser itself for every policy (init scripts are not subject to CSP).
  void page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || 'inline'} (${e.sourceFile}:${e.lineNumber})`);
    });
  });
  return {
    problems,
    check() {
      expect(problems, 'console errors, uncaught exceptions or CSP violations').toEqual([]);
    },
  };
}

/** axe-core on the current page: no serious or critical violation. */
export async function accessible(page: Page, name: string) {
  const results = await new AxeBuilder({ page }).analyze();
  const bad = results.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  const summary = bad.map((v) => `${v.impact} ${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).slice(0, 3).join('; ')})`);
  expect(summary, `axe on ${name}`).toEqual([]);
}

export async function shoot(page: Page, name: string) {
  await page.screenshot({ path: resolve(SHOTS, `${name}.png`), fullPage: true, animations: 'disabled' });
}

/** Check a page (axe, screenshot). */
export async function visit(page: Page, name: string) {
  await expect(page.locator('main h1')).toBeVisible();
  await page.waitForFunction(() => !document.querySelector('main [aria-busy="true"]'), null, { timeout: 30_000 });
  await accessible(page, name);
  await shoot(page, name);
}

/** The local login page: pick a tenant and a role. */
export async function logIn(page: Page, tenant: string, role: 'viewer' | 'operator' | 'admin') {
  await expect(page.getByRole('heading', { name: 'custody local login' })).toBeVisible();
  await page.getByLabel('Tenant').fill(tenant);
  await page.getByLabel('Role').selectOption(role);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await expect(page.getByRole('navigation', { name: 'Main' })).toBeVisible();
  await expect(page.getByTestId('role')).toHaveText(role);
}

export async function go(page: Page, link: string) {
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: link, exact: true }).click();
  await expect(page.locator('main h1')).toBeFocused();
}
