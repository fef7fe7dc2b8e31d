// Privacy paths beyond the journey's erasure, on a fresh tenant: declared purposes and
// a consent record looked up; a restriction of processing filed, listed and lifted
// (another left in force, which a viewer sees without any way to lift it); an access
// request processed by the stack's stream whose bundle link serves JSON; a request
// with subject verification (the stack's destination receiver as the verification
// webhook: it cannot hand the code back, so three wrong codes lock the request),
// extended once with a reason; last, the account deletion refuses anything but the
// tenant's exact id, and then deletes this spec's tenant. Between them: a rectification
// (a correction equal to the current value refused on its field, then one processed)
// and the account holder's copy, built by the stream and downloaded as a tar archive.
import { expect, test, type Page } from '@playwright/test';
import { resolve } from 'node:path';
import { SHOTS, accessible, go, logIn, shoot, visit, watch } from './helpers';
import { stack } from './stack';

const TENANT = `priv${Date.now().toString(36)}`;

test.describe.configure({ mode: 'serial' });

const section = (page: Page, heading: string) => page.locator(`section[aria-labelledby="${heading}"]`);

async function startAdmin(page: Page) {
  await page.goto(stack().console + '/');
  await logIn(page, TENANT, 'admin');
  await go(page, 'Privacy');
  await page.waitForFunction(() => !document.querySelector('main [aria-busy="true"]'), null, { timeout: 30_000 });
}

/** Files a request from the Privacy page and lands on its detail page; returns its id. */
async function file(page: Page, kind: 'access' | 'restrict', email: string, options: { ground?: string; verify?: boolean } = {}) {
  const form = section(page, 'new-heading');
  await form.getByLabel(kind === 'access' ? /^Access/ : /^Restrict processing/).check();
  if (options.ground) await form.getByLabel('Ground').selectOption(options.ground);
  await form.getByLabel('Email').fill(email);
  if (options.verify) await form.getByLabel(/^Verify the subject first/).check();
  await form.getByRole('button', { name: kind === 'access' ? 'File access request' : 'File restriction' }).click();
  await expect(page).toHaveURL(/\/privacy\/requests\/[0-9A-Za-z]{26}$/);
  return page.url().split('/').pop()!;
}

let inForce = '';

test('admin: declared purposes, consent, and a restriction filed and lifted', async ({ page }) => {
  const watcher = watch(page);
  await startAdmin(page);

  // Declare two purposes (the settings are a partial update: only these are sent).
  const settings = section(page, 'privacy-settings-heading');
  await expect(settings.getByText('No purposes declared')).toBeVisible();
  const saves: string[] = [];
  page.on('request', (r) => {
    if (r.method() === 'PUT' && r.url().endsWith('/privacy/settings')) saves.push(r.postData() ?? '');
  });
  for (const purpose of ['marketing_email', 'crm_sync']) {
    await settings.getByLabel('Add a purpose').fill(purpose);
    await settings.getByRole('button', { name: 'Add purpose' }).click();
  }
  // A malformed one is refused before it is sent.
  await settings.getByLabel('Add a purpose').fill('Not A Purpose');
  await settings.getByRole('button', { name: 'Add purpose' }).click();
  await expect(settings.locator('#add-purpose-error')).toContainText('lower case');
  await settings.getByLabel('Add a purpose').fill('');
  await settings.getByRole('button', { name: 'Save privacy settings' }).click();
  await expect(settings.getByRole('status')).toContainText('Privacy settings saved (purposes)');
  expect(saves.map((b) => JSON.parse(b))).toEqual([{ purposes: ['marketing_email', 'crm_sync'] }]);
  await expect(settings.locator('li[data-purpose]')).toHaveCount(2);
  await accessible(page, 'privacy (purposes declared)');
  await settings.screenshot({ path: resolve(SHOTS, 'privacy-settings-purposes.png'), animations: 'disabled' });

  // Consent: the purpose is now a select of the declared ones.
  const consent = section(page, 'consent-heading');
  await consent.getByLabel('Email').fill('consent@example.org');
  const purpose = consent.getByLabel('Purpose');
  await expect(purpose).toHaveJSProperty('tagName', 'SELECT');
  await purpose.selectOption('marketing_email');
  await consent.getByLabel('State').selectOption('withdrawn');
  await consent.getByLabel('Policy version').fill('2026-01');
  await consent.getByRole('button', { name: 'Record consent' }).click();
  await expect(consent.getByRole('status')).toContainText('Recorded: marketing_email withdrawn (version 1)');
  const records = consent.getByRole('region', { name: 'Consent records of the subject' });
  await expect(records.locator('tbody tr')).toHaveCount(1);
  await expect(records).toContainText('withdrawn');
  // A fresh lookup finds the same record.
  await page.reload();
  await logIn(page, TENANT, 'admin');
  await consent.getByLabel('Email').fill('consent@example.org');
  await consent.getByRole('button', { name: 'Look up consent' }).click();
  await expect(records.locator('tbody tr')).toHaveCount(1);
  await expect(records).toContainText('marketing_email');
  await expect(records).toContainText('2026-01');
  await accessible(page, 'privacy (consent looked up)');
  await shoot(page, 'privacy-consent');

  // A restriction: no verification offered, the ground required, in force at once.
  const form = section(page, 'new-heading');
  await form.getByLabel(/^Restrict processing/).check();
  await expect(form.getByLabel(/^Verify the subject first/)).toHaveCount(0);
  await expect(form.getByRole('button', { name: 'File restriction' })).toBeDisabled();
  await accessible(page, 'privacy (new restriction)');
  const id = await file(page, 'restrict', 'restricted@example.org', { ground: 'accuracy_contested' });
  await expect(page.locator('main h1')).toContainText('Restriction of processing');
  const restriction = page.locator('section[data-restriction]');
  await expect(restriction).toHaveAttribute('data-restriction', 'in-force');
  await expect(restriction).toContainText('Accuracy contested');
  await expect(page.getByText('restriction in force').first()).toBeVisible();
  await expect(page.locator('ol.timeline')).toContainText('First substantive response');
  await expect(page.getByRole('heading', { name: 'Extend the deadline' })).toHaveCount(0);
  await visit(page, 'privacy-restrict');

  // Listed while in force, with its badge.
  await go(page, 'Privacy');
  const row = page.locator(`tr[data-request="${id}"]`);
  await expect(row).toContainText('restriction in force');
  await expect(row).toContainText('accuracy contested');
  await expect(row).toContainText('answered');

  // Lifted with a reason, after a confirmation that processing resumes.
  await row.getByRole('link').click();
  await expect(restriction).toHaveAttribute('data-restriction', 'in-force');
  const lift = restriction.getByRole('button', { name: 'Lift restriction' });
  await expect(lift).toBeDisabled();
  await restriction.getByLabel(/^Reason for lifting/).fill('The subject confirmed the corrected address.');
  await lift.click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toContainText('Processing of the subject\'s data resumes');
  await accessible(page, 'privacy request (lift dialog)');
  await dialog.getByRole('button', { name: 'Lift restriction' }).click();
  await expect(restriction.getByRole('status')).toContainText('processing of the subject\'s data resumes');
  await expect(restriction).toHaveAttribute('data-restriction', 'lifted');
  await expect(restriction).toContainText('The subject confirmed the corrected address.');
  await expect(restriction.getByRole('button', { name: 'Lift restriction' })).toHaveCount(0);
  await visit(page, 'privacy-restrict-lifted');
  await go(page, 'Privacy');
  await expect(page.locator(`tr[data-request="${id}"]`)).toHaveCount(0);

  // Another one stays in force (the viewer test below sees it).
  inForce = await file(page, 'restrict', 'objector@example.org', { ground: 'objection' });
  await go(page, 'Privacy');
  await expect(page.locator(`tr[data-request="${inForce}"]`)).toContainText('restriction in force');
  await visit(page, 'privacy-restrictions-listed');

  watcher.check();
});

test('admin: an access bundle, an extension, and subject verification locked', async ({ page }) => {
  const s = stack();
  const watcher = watch(page);
  await startAdmin(page);

  // An access request runs on the stack's stream; its bundle link serves JSON.
  const access = await file(page, 'access', 'bundle@example.org');
  const bundle = section(page, 'bundle-heading');
  await expect(bundle.getByRole('link', { name: 'Download the bundle' })).toBeVisible({ timeout: 150_000 });
  await expect(page.locator('main')).toContainText('complete');
  const href = await bundle.getByRole('link', { name: 'Download the bundle' }).getAttribute('href');
  expect(href, 'a presigned URL').toMatch(/^https?:\/\/.+[?&]X-Amz-Signature=/i);
  const got = await page.request.get(href!);
  expect(got.ok(), `GET bundle answered ${got.status()}`).toBeTruthy();
  const body = await got.text();
  expect(() => JSON.parse(body), 'the bundle is JSON').not.toThrow();
  await visit(page, 'privacy-access-bundle');
  expect(access).toMatch(/^[0-9A-Za-z]{26}$/);

  // The verification webhook: the stack's destination receiver (it records, and
  // cannot hand the code back to a test).
  await go(page, 'Privacy');
  const settings = section(page, 'privacy-settings-heading');
  await settings.getByLabel(/^Verification webhook URL/).fill(s.destination.url);
  await settings.getByLabel('Webhook signing secret').fill(s.destination.secret);
  await settings.getByRole('button', { name: 'Save privacy settings' }).click();
  await expect(settings.getByRole('status')).toContainText('Privacy settings saved (verification webhook)');
  await expect(settings.getByLabel('Webhook signing secret')).toHaveValue('');

  // A request waiting for the subject's code: extended once, with a reason.
  await file(page, 'access', 'verify-me@example.org', { verify: true });
  await expect(page.locator('main p').filter({ hasText: 'Status:' })).toContainText('identity unverified');
  const extend = section(page, 'extend-heading');
  await extend.getByLabel(/^Reason/).fill('The request covers several years of archived conversations.');
  await expect(extend.getByLabel('By months (1-2)')).toHaveValue('2');
  await extend.getByRole('button', { name: 'Extend once' }).click();
  await expect(page.locator('ol.timeline')).toContainText('by 2 months', { timeout: 20_000 });
  await expect(page.getByRole('heading', { name: 'Extend the deadline' })).toHaveCount(0);
  await visit(page, 'privacy-extended');

  // Three wrong codes lock it: two say how many attempts are left, the third denies.
  const verify = section(page, 'verify-heading');
  const code = verify.getByLabel('The code the subject received');
  await code.fill('000000');
  await verify.getByRole('button', { name: 'Verify' }).click();
  await expect(verify.locator('.field-error')).toContainText('2 attempt(s) left');
  await expect(code).toHaveAttribute('aria-invalid', 'true');
  await accessible(page, 'privacy request (wrong code)');
  await shoot(page, 'privacy-verify-wrong-code');
  await code.fill('111111');
  await verify.getByRole('button', { name: 'Verify' }).click();
  await expect(verify.locator('.field-error')).toContainText('1 attempt(s) left');
  await code.fill('222222');
  await verify.getByRole('button', { name: 'Verify' }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Denied: verification failed' })).toBeVisible();
  await expect(page.locator('main p').filter({ hasText: 'Status:' })).toContainText('denied');
  await expect(verify).toHaveCount(0);
  await visit(page, 'privacy-verification-locked');

  watcher.check();
});

test('admin: a rectification, its corrected value checked and never shown', async ({ page }) => {
  const watcher = watch(page);
  await startAdmin(page);
  const form = section(page, 'new-heading');
  await form.getByLabel(/^Rectification/).check();
  await form.getByLabel('Email', { exact: true }).fill('old.address@example.org');
  // A "correction" equal to the current value is refused on its own field.
  await form.getByLabel('Corrected email').fill('Old.Address@example.org');
  await form.getByRole('button', { name: 'File rectification request' }).click();
  await expect(form.locator('.field-error[data-field="corrections.email"]')).toBeVisible();
  await expect(form.getByLabel('Corrected email')).toHaveAttribute('aria-invalid', 'true');
  await accessible(page, 'privacy (rectification refused)');

  await form.getByLabel('Corrected email').fill('new.address@example.org');
  await form.getByRole('button', { name: 'File rectification request' }).click();
  await expect(page).toHaveURL(/\/privacy\/requests\/[0-9A-Za-z]{26}$/);
  await expect(page.locator('main h1')).toContainText('Rectification');
  const done = page.locator('section[data-rectification="complete"]');
  await expect(done).toBeVisible({ timeout: 150_000 });
  await expect(done).toContainText('Corrected: email');
  await expect(done).toContainText('files rewritten');
  // The notices about it are listed with their delivery (no notification webhook here: skipped).
  const notices = page.getByRole('region', { name: 'Notices to the account' });
  await expect(notices.locator('tr[data-notice="privacy_request.received"]')).toContainText('skipped');
  await expect(notices.locator('tr[data-notice="privacy_request.completed"]')).toBeVisible();
  // Kinds and counts only: neither value is on the page.
  await expect(page.locator('main')).not.toContainText('new.address@example.org');
  await expect(page.locator('main')).not.toContainText('old.address@example.org');
  await visit(page, 'privacy-rectified');
  watcher.check();
});

test('viewer: a restriction in force, and no way to lift it', async ({ page }) => {
  const s = stack();
  const watcher = watch(page);
  expect(inForce, 'the first test left a restriction in force').not.toBe('');
  await page.goto(s.console + '/');
  await logIn(page, TENANT, 'viewer');
  await go(page, 'Privacy');
  await expect(page.locator(`tr[data-request="${inForce}"]`)).toContainText('restriction in force');
  await page.goto(s.console + `/privacy/requests/${inForce}`);
  await logIn(page, TENANT, 'viewer');
  await expect(page.locator('section[data-restriction]')).toHaveAttribute('data-restriction', 'in-force');
  await page.waitForFunction(() => !document.querySelector('main [aria-busy="true"]'), null, { timeout: 30_000 });
  await expect(page.locator('main').locator('button, input, select, textarea, form')).toHaveCount(0);
  await accessible(page, 'privacy restriction (viewer)');
  await shoot(page, 'viewer-privacy-restrict');
  watcher.check();
});

test('admin: a copy of the account, built in the background and downloaded', async ({ page }) => {
  const watcher = watch(page);
  await page.goto(stack().console + '/');
  await logIn(page, TENANT, 'admin');
  await go(page, 'Account');
  const section = page.locator('section[data-account-export]');
  await section.getByRole('button', { name: 'Build a copy of the account' }).click();
  await expect(section).toHaveAttribute('data-account-export', 'ready', { timeout: 90_000 });
  const link = section.getByRole('link', { name: 'Download the copy' });
  const url = await link.getAttribute('href');
  expect(url, 'a presigned link').toMatch(/^https?:\/\//);
  const archive = await page.request.get(url!);
  expect(archive.status()).toBe(200);
  const body = await archive.body();
  // A tar archive: the first member's name starts the first 512-byte header, and the
  // magic "ustar" sits at offset 257.
  expect(body.length % 512, 'whole tar blocks').toBe(0);
  expect(body.subarray(257, 262).toString('latin1')).toBe('ustar');
  const text = body.toString('latin1');
  for (const member of ['manifest.json', 'connections.json', 'privacy-requests.json', 'consent.json', 'audit.jsonl']) {
    expect(text, `the archive holds ${member}`).toContain(member);
  }
  await accessible(page, 'account (copy ready)');
  await shoot(page, 'account-copy-ready');
  watcher.check();
});

test('admin: deleting the account takes the exact tenant id, then purges', async ({ page }) => {
  const watcher = watch(page);
  await page.goto(stack().console + '/');
  await logIn(page, TENANT, 'admin');
  await go(page, 'Account');
  const confirm = page.getByLabel(/^Type the account id/);
  const remove = page.getByRole('button', { name: 'Delete this account and all its data' });
  let deletes = 0;
  page.on('request', (r) => {
    if (r.method() === 'DELETE' && r.url().endsWith('/account')) deletes++;
  });
  for (const wrong of ['', 'demo', TENANT.toUpperCase(), `${TENANT} `, TENANT.slice(0, -1)]) {
    await confirm.fill(wrong);
    await expect(remove, `confirm with ${JSON.stringify(wrong)}`).toBeDisabled();
  }
  await confirm.press('Enter');
  expect(deletes, 'no DELETE /account for a wrong name').toBe(0);
  await accessible(page, 'account (wrong tenant typed)');
  await shoot(page, 'account-delete-refused');

  // This spec's own tenant: deleted last.
  await confirm.fill(TENANT);
  await expect(remove).toBeEnabled();
  await remove.click();
  const started = page.getByRole('status').filter({ hasText: 'Deletion started' });
  await expect(started).toContainText('purging');
  await expect(started).toContainText('schedule was not set');
  expect(deletes).toBe(1);
  await accessible(page, 'account (purging)');
  await shoot(page, 'account-purging');
  watcher.check();
});
