// The console's browser journey against the local stack (`make up`): an admin
// connects HighLevel, exports to WebDAV (testing the destination first), imports a
// CSV, files an erasure and sees its certificate verify, then finds the audit chains
// verified with the erasure in them; a viewer then finds no write controls anywhere
// and no audit log (admins only). Last, an install from the HighLevel Marketplace is
// claimed in the console (its own tenant and location).
import { expect, test, type Page } from '@playwright/test';
import { accessible, go, logIn, shoot, visit, watch } from './helpers';
import { stack } from './stack';

const TENANT = `e2e${Date.now().toString(36)}`;
const SUBJECT = 'ada@example.org';

const CSV = [
  'Customer ID,Full Name,E-mail Address,Mobile,Note',
  `c-001,Ada Lovelace,${SUBJECT},+447700900001,first`,
  'c-002,Alan Turing,alan@example.org,+447700900002,second',
  'c-003,Bad Row,not-an-email,+447700900003,the bad one',
  'c-004,Grace Hopper,grace@example.org,+447700900004,fourth',
  '',
].join('\r\n');

let requestId = '';

test.describe.configure({ mode: 'serial' });

test('admin: connect, export, import, erase with a verified certificate', async ({ page }) => {
  const s = stack();
  const watcher = watch(page);

  // 1. Log in as admin (a fresh tenant per run).
  await page.goto(s.console + '/');
  await logIn(page, TENANT, 'admin');
  await expect(page.locator('main h1')).toHaveText('Overview');
  await visit(page, 'overview');

  // 2. Connect HighLevel through the simulated provider; the console comes back
  //    (tokens are in memory only, so it signs in again on the way back).
  await go(page, 'Connections');
  await page.getByRole('button', { name: 'Connect HighLevel' }).click();
  await logIn(page, TENANT, 'admin');
  await expect(page.getByRole('status').filter({ hasText: 'Connected.' })).toBeVisible();
  const highlevel = page.locator('article[data-provider="highlevel"]');
  await expect(highlevel.getByText('active')).toBeVisible();
  await expect(highlevel.getByRole('button', { name: 'Disconnect HighLevel' })).toBeVisible();
  await visit(page, 'connections');
  // The disconnect confirmation says the tokens go at once (cancelled here).
  await highlevel.getByRole('button', { name: 'Disconnect HighLevel' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toContainText('deleted at once');
  await accessible(page, 'connections (disconnect dialog)');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();

  // 3. WebDAV export settings, then run now and see the run in the log.
  await go(page, 'Exports');
  await page.getByLabel('When').selectOption({ label: 'Every day at 03:00' });
  await page.getByLabel('Time zone').fill('Europe/Berlin');
  await page.getByLabel('Fixed dates').check();
  await page.getByLabel('Start (UTC)').fill('2025-01-01');
  await page.getByLabel('End (UTC, exclusive)').fill('2025-07-01');
  await page.getByLabel('WebDAV', { exact: true }).check();
  await page.getByLabel('WebDAV URL').fill(s.webdav.url);
  await page.getByLabel('Username').fill(s.webdav.username);
  await page.getByLabel('Password').fill(s.webdav.password);
  await page.getByRole('button', { name: 'Save export settings' }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Settings saved' })).toBeVisible();
  await expect(page.getByLabel('Password')).toHaveValue('');
  await expect(page.getByLabel('Password')).toHaveAttribute('placeholder', /stored/);
  // Test the saved destination (the password left empty: the saved one is used).
  await page.getByRole('button', { name: 'Test destination' }).click();
  const tested = page.getByRole('status').filter({ hasText: 'Destination test' });
  await expect(tested).toContainText('Destination test passed', { timeout: 60_000 });
  await expect(tested).toContainText('.custody-probe-');
  await expect(tested).toContainText('nothing is left behind');
  await accessible(page, 'exports (destination tested)');
  await shoot(page, 'exports-test-destination');
  await page.getByRole('button', { name: 'Run now' }).click();
  const run = page.locator('tr[data-run]').first();
  await expect(run).toContainText('run now');
  await expect(run).toContainText('completed', { timeout: 150_000 });
  await visit(page, 'exports');

  // 4. Import a CSV: map columns, see the bad row before upload, upload, download, delete.
  await go(page, 'Imports');
  await page.getByLabel('File (CSV or JSON Lines)').setInputFiles({
    name: 'contacts.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(CSV),
  });
  await expect(page.getByText('contacts.csv: 4 rows, 5 columns')).toBeVisible();
  await page.getByLabel('Field for column Full Name').fill('name');
  await page.getByLabel('Field for column Customer ID').fill('contact_id');
  await expect(page.getByLabel('Identifier in column E-mail Address')).toHaveValue('email');
  await page.getByLabel('Identifier in column Customer ID').selectOption('contact_id');
  await page.getByLabel('Column E-mail Address is required').check();
  await page.getByLabel('Import column Note').uncheck();
  await page.getByLabel('Destination webhook URL').fill(s.destination.url);
  await page.getByLabel('Signing secret (optional)').fill(s.destination.secret);
  await page.getByRole('button', { name: 'Validate rows' }).click();
  const rowErrors = page.locator('table.row-errors');
  await expect(rowErrors).toContainText('email is not a valid email address');
  await expect(rowErrors.locator('tbody tr')).toHaveCount(1);
  await expect(rowErrors.locator('tbody tr td').first()).toHaveText('4');
  await expect(page.getByText('3 valid rows, 1 rows with errors')).toBeVisible();
  await accessible(page, 'imports (validated)');
  await shoot(page, 'imports-validation');
  await page.getByRole('button', { name: 'Upload 3 valid rows' }).click();
  const done = page.getByRole('status').filter({ hasText: /^Import / });
  await expect(done).toContainText('delivered', { timeout: 90_000 });
  const importRow = page.locator('tr[data-import]').first();
  await expect(importRow).toContainText('delivered');
  await expect(importRow).toContainText('3 / 0 / 3');
  await visit(page, 'imports');

  await importRow.getByRole('link').click();
  await expect(page.locator('main h1')).toContainText('Import');
  await visit(page, 'import-detail');
  await page.getByRole('button', { name: /^Download import/ }).click();
  const link = page.getByRole('link', { name: /upload\.csv|\.csv$/ });
  await expect(link).toBeVisible();
  const href = await link.getAttribute('href');
  const downloaded = await page.request.get(href!);
  expect(downloaded.ok()).toBeTruthy();
  const text = await downloaded.text();
  expect(text).toContain(SUBJECT);
  expect(text).toContain('contact_id,name,email');
  expect(text).not.toContain('not-an-email');
  await page.getByRole('button', { name: /^Delete import/ }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete import' }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Deleted' })).toBeVisible();

  // 5. An erasure request; its certificate verifies in the browser.
  await go(page, 'Privacy');
  await page.getByLabel(/^Erasure/).check();
  await page.getByLabel('Regulation').selectOption('gdpr');
  await page.getByLabel('Email').first().fill(SUBJECT);
  await page.getByRole('button', { name: 'File erasure request' }).click();
  await expect(page).toHaveURL(/\/privacy\/requests\/[0-9A-Za-z]{26}$/);
  requestId = page.url().split('/').pop()!;
  await expect(page.locator('[data-verified]')).toHaveAttribute('data-verified', 'true', { timeout: 150_000 });
  await expect(page.getByText('Signature verified')).toBeVisible();
  await expect(page.locator('pre code')).toContainText('openssl dgst -sha256 -verify');
  await visit(page, 'privacy-request');
  await go(page, 'Privacy');
  await visit(page, 'privacy');

  // 6. The audit log: both chains verify, and the erasure is in the evidence chain.
  await go(page, 'Audit');
  const verdict = page.locator('[data-audit-verified]');
  await expect(verdict).toHaveAttribute('data-audit-verified', 'true');
  await expect(verdict).toContainText('Verified');
  await expect(page.locator('tr[data-chain="evidence"]')).toBeVisible();
  await expect(page.locator('tr[data-chain="activity"]')).toBeVisible();
  const erased = page.locator('tr[data-action="privacy_request.erased"]');
  await expect(erased).toHaveCount(1);
  await expect(erased).toContainText('success');
  await expect(page.locator('tr[data-action="privacy_request.created"]')).toHaveCount(1);
  await visit(page, 'audit');
  await page.getByLabel('Action').fill('privacy_request.erased');
  await page.getByRole('button', { name: 'Show entries' }).click();
  await expect(page.locator('tr[data-action]')).toHaveCount(1);
  await expect(page.locator('tr[data-action]')).toHaveAttribute('data-action', 'privacy_request.erased');
  // The activity chain holds the destination test.
  await page.getByLabel(/^Activity/).check();
  await expect(page.locator('tr[data-action="export_destination.tested"]')).toHaveCount(1);
  await expect(page.getByLabel('Action')).toHaveValue('');
  await accessible(page, 'audit (activity)');

  // 7. The remaining pages.
  await go(page, 'Account');
  await visit(page, 'account');

  watcher.check();
});

const PAGES: [string, string][] = [
  ['Overview', '/'],
  ['Connections', '/connections'],
  ['Exports', '/exports'],
  ['Imports', '/imports'],
  ['Privacy', '/privacy'],
  ['Audit', '/audit'],
  ['Account', '/account'],
];

async function noWriteControls(page: Page, where: string) {
  const main = page.locator('main');
  await page.waitForFunction(() => !document.querySelector('main [aria-busy="true"]'), null, { timeout: 30_000 });
  const controls = await main.locator('button, input, select, textarea, form, [contenteditable="true"]').evaluateAll((els) =>
    els
      .filter((el) => !(el.tagName === 'BUTTON' && /^(older runs|more imports)$/i.test(el.textContent?.trim() ?? '')))
      .map((el) => `${el.tagName.toLowerCase()} ${(el as HTMLElement).innerText || el.getAttribute('name') || el.getAttribute('aria-label') || ''}`),
  );
  expect(controls, `write controls on ${where} for a viewer`).toEqual([]);
}

test('viewer: every page, and no write controls on any of them', async ({ page }) => {
  const s = stack();
  const watcher = watch(page);
  // The API would answer a viewer 403 on the audit routes: the console does not ask.
  const auditCalls: string[] = [];
  page.on('request', (r) => {
    const url = new URL(r.url());
    if (s.api && r.url().startsWith(s.api) && /\/audit(\/|$)/.test(url.pathname)) auditCalls.push(r.url());
  });
  await page.goto(s.console + '/');
  await logIn(page, TENANT, 'viewer');
  for (const [name, path] of PAGES) {
    if (path !== '/') await go(page, name);
    await expect(page).toHaveURL(s.console + path);
    await noWriteControls(page, name);
    await accessible(page, `${name} (viewer)`);
    await shoot(page, `viewer-${name.toLowerCase()}`);
  }
  // The audit page says admins only: no controls, no entries, no verification.
  await go(page, 'Audit');
  await expect(page.getByTestId('admins-only')).toContainText('admins only');
  await expect(page.locator('main table, main [data-audit-verified], main tr[data-action]')).toHaveCount(0);
  expect(auditCalls, 'audit API calls by a viewer').toEqual([]);
  // The connection is there, without Connect or Disconnect.
  await go(page, 'Connections');
  await expect(page.locator('article[data-provider="highlevel"]')).toContainText('active');
  // The exports page shows the log, not Run now.
  await go(page, 'Exports');
  await expect(page.locator('tr[data-run]').first()).toContainText('completed');
  // The certificate verifies for a viewer too.
  if (requestId) {
    await page.goto(s.console + `/privacy/requests/${requestId}`);
    await logIn(page, TENANT, 'viewer');
    await expect(page.locator('[data-verified]')).toHaveAttribute('data-verified', 'true', { timeout: 60_000 });
    await noWriteControls(page, 'the privacy request');
  }
  watcher.check();
});

test('admin: claim an install from the HighLevel Marketplace', async ({ page }) => {
  const s = stack();
  expect(s.marketplaceInstall, 'the state file names the Marketplace install URL').toMatch(/^http/);
  const watcher = watch(page);
  // Its own tenant and a location no other tenant holds (the Marketplace lets the
  // admin pick the sub-account), so reruns against one stack do not collide.
  const tenant = `${TENANT}mp`;
  const other = `${TENANT}mq`;
  const location = `loc_e2e_${Date.now().toString(36)}`;
  const install = new URL(s.marketplaceInstall);
  install.searchParams.set('location_id', location);

  await page.goto(s.console + '/');
  await logIn(page, tenant, 'admin');
  await go(page, 'Connections');
  const highlevel = page.locator('article[data-provider="highlevel"]');
  await expect(highlevel).toContainText('not connected');

  // Click Install in the simulated Marketplace: the browser comes back through
  // custody's callback (code, no state) to the console's claim page, and HighLevel
  // sends its signed INSTALL webhook to custody by itself.
  const claimOnce = async (who: string) => {
    await page.goto(install.toString());
    await logIn(page, who, 'admin');
    const callout = page.getByRole('region', { name: 'Installation from the HighLevel Marketplace' });
    await expect(callout).toContainText(`location:${location}`);
    // The query and the claim token's fragment are gone from the address bar.
    await expect(page).toHaveURL(s.console + '/connections');
    return callout;
  };
  let callout = await claimOnce(tenant);
  await page.waitForFunction(() => !document.querySelector('main [aria-busy="true"]'), null, { timeout: 30_000 });
  await accessible(page, 'connections (Marketplace install to claim)');
  await shoot(page, 'connections-claim');
  // The console retries while custody answers 409 install-unconfirmed (the webhook
  // not in yet).
  await callout.getByRole('button', { name: `Claim for ${tenant}` }).click();
  await expect(page.getByRole('status').filter({ hasText: 'HighLevel installation claimed.' })).toBeVisible({ timeout: 30_000 });
  await expect(callout).toBeHidden();
  await expect(highlevel.getByText('active')).toBeVisible();
  await expect(highlevel).toContainText(`location ${location}`);
  await expect(highlevel.getByRole('button', { name: 'Disconnect HighLevel' })).toBeVisible();
  await accessible(page, 'connections (Marketplace install claimed)');

  // Installed again for the same tenant: the claim replaces the connection.
  callout = await claimOnce(tenant);
  await callout.getByRole('button', { name: `Claim for ${tenant}` }).click();
  await expect(page.getByRole('status').filter({ hasText: 'replaced the earlier connection' })).toBeVisible({ timeout: 30_000 });
  await expect(highlevel).toContainText(`location ${location}`);

  // Another tenant cannot claim a location this tenant holds.
  callout = await claimOnce(other);
  await callout.getByRole('button', { name: `Claim for ${other}` }).click();
  const refused = page.getByRole('alert');
  await expect(refused).toContainText('Installation held by another tenant', { timeout: 30_000 });
  await expect(refused).toContainText('409');
  await expect(highlevel).toContainText('not connected');
  await accessible(page, 'connections (claim refused)');

  watcher.check();
});
