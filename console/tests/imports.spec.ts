// Imports beyond the journey's store-mode CSV, on a fresh tenant: a bypass import of
// 1200 rows sent in row batches (progress shown) that reaches the stack's destination
// webhook, and its detail page; a purpose-bound import after a restriction and a
// consent withdrawal filed in the console, which leaves both subjects out and shows
// the counts; then "delete all imports" behind its confirmation.
import { expect, test, type Page } from '@playwright/test';
import { accessible, go, logIn, shoot, visit, watch } from './helpers';
import { stack } from './stack';

const TENANT = `imp${Date.now().toString(36)}`;
const ROWS = 1200;

test.describe.configure({ mode: 'serial' });

const section = (page: Page, heading: string) => page.locator(`section[aria-labelledby="${heading}"]`);

function csv(lines: string[]): Buffer {
  return Buffer.from(['contact_id,name,email', ...lines, ''].join('\r\n'));
}

/** Chooses a file, maps nothing by hand, points at the stack's destination and validates. */
async function prepare(page: Page, name: string, body: Buffer, mode: 'store' | 'bypass') {
  const s = stack();
  await page.getByLabel('File (CSV or JSON Lines)').setInputFiles({ name, mimeType: 'text/csv', buffer: body });
  await expect(page.getByText(new RegExp(`^${name.replace('.', '\\.')}: \\d+ rows`))).toBeVisible();
  await expect(page.getByLabel('Identifier in column email')).toHaveValue('email');
  await page.getByLabel('Destination webhook URL').fill(s.destination.url);
  await page.getByLabel('Signing secret (optional)').fill(s.destination.secret);
  await page.getByLabel(mode === 'store' ? /^Store:/ : /^Bypass:/).check();
  await page.getByRole('button', { name: 'Validate rows' }).click();
}

test('operator: a bypass import in row batches reaches the destination', async ({ page }) => {
  const watcher = watch(page);
  await page.goto(stack().console + '/');
  await logIn(page, TENANT, 'operator');
  await go(page, 'Imports');
  // Operators cannot read the declared purposes (admins only): a free field the API checks.
  await expect(page.getByText('No imports.')).toBeVisible();
  const lines = Array.from({ length: ROWS }, (_, i) => `b-${i},Person ${i},person${i}@example.org`);
  await prepare(page, 'bypass.csv', csv(lines), 'bypass');
  await expect(page.getByText(`${ROWS} valid rows, 0 rows with errors`)).toBeVisible();
  await expect(page.getByLabel('Keep for')).toHaveCount(0);
  await expect(page.getByLabel('Purpose (optional)')).toHaveJSProperty('tagName', 'INPUT');
  await page.getByRole('button', { name: `Upload ${ROWS} valid rows` }).click();
  // Three batches of at most 500 rows, with a progress bar while they go.
  const progress = page.locator('progress');
  const done = page.getByRole('status').filter({ hasText: /^Import / });
  await expect(progress.or(done).first()).toBeVisible();
  await expect(done).toContainText('delivered', { timeout: 90_000 });
  await expect(done).toContainText(`${ROWS} rows valid, ${ROWS} delivered`);
  await expect(done).not.toContainText('Left out');
  const row = page.locator('tr[data-import]').first();
  await expect(row).toContainText('rows · bypass');
  await expect(row).toContainText(`${ROWS} / 0 / ${ROWS}`);
  await expect(row).toContainText('nothing kept');
  await visit(page, 'imports-bypass');

  await row.getByRole('link').click();
  await expect(page.locator('main h1')).toContainText('Import');
  const detail = page.locator('main dl');
  await expect(detail).toContainText('rows, bypass, retention bypass');
  await expect(detail).toContainText(`${ROWS} valid, 0 invalid, ${ROWS} delivered`);
  await expect(detail).toContainText(new URL(stack().destination.url).hostname);
  await expect(detail).toContainText('delivered in 3 batches');
  await expect(detail).not.toContainText('Left out');
  await visit(page, 'import-bypass-detail');
  watcher.check();
});

test('admin: a purpose-bound import leaves out a restricted subject and a withdrawn consent', async ({ page }) => {
  const watcher = watch(page);
  await page.goto(stack().console + '/');
  await logIn(page, TENANT, 'admin');

  // Declare the purpose, withdraw one subject's consent for it, restrict another.
  await go(page, 'Privacy');
  const settings = section(page, 'privacy-settings-heading');
  await settings.getByLabel('Add a purpose').fill('crm_sync');
  await settings.getByRole('button', { name: 'Add purpose' }).click();
  await settings.getByRole('button', { name: 'Save privacy settings' }).click();
  await expect(settings.getByRole('status')).toContainText('Privacy settings saved (purposes)');
  const consent = section(page, 'consent-heading');
  await consent.getByLabel('Email').fill('withdrawn@example.org');
  await consent.getByLabel('Purpose').selectOption('crm_sync');
  await consent.getByLabel('State').selectOption('withdrawn');
  await consent.getByLabel('Policy version').fill('2026-01');
  await consent.getByRole('button', { name: 'Record consent' }).click();
  await expect(consent.getByRole('status')).toContainText('Recorded: crm_sync withdrawn');
  const form = section(page, 'new-heading');
  await form.getByLabel(/^Restrict processing/).check();
  await form.getByLabel('Ground').selectOption('unlawful_processing');
  await form.getByLabel('Email').fill('restricted@example.org');
  await form.getByRole('button', { name: 'File restriction' }).click();
  await expect(page.locator('section[data-restriction]')).toHaveAttribute('data-restriction', 'in-force');

  // The import names the purpose (a select of the declared ones, for an admin).
  await go(page, 'Imports');
  await prepare(
    page,
    'bound.csv',
    csv(['p-1,Ada,ada@example.org', 'p-2,Rita Restricted,restricted@example.org', 'p-3,Walt Withdrawn,withdrawn@example.org', 'p-4,Grace,grace@example.org']),
    'store',
  );
  await expect(page.getByText('4 valid rows, 0 rows with errors')).toBeVisible();
  const purpose = page.getByLabel('Purpose (optional)');
  await expect(purpose).toHaveJSProperty('tagName', 'SELECT');
  await purpose.selectOption('crm_sync');
  await accessible(page, 'imports (purpose chosen)');
  await page.getByRole('button', { name: 'Upload 4 valid rows' }).click();
  const done = page.getByRole('status').filter({ hasText: /^Import / });
  await expect(done).toContainText('delivered', { timeout: 90_000 });
  await expect(done).toContainText('4 rows valid, 2 delivered');
  await expect(done).toContainText('Left out: 1 restricted, 1 consent withdrawn');
  const row = page.locator('tr[data-import]').first();
  await expect(row).toContainText('4 / 0 / 2');
  await expect(row.locator('[data-left-out]')).toHaveText('left out: 1 restricted, 1 consent withdrawn');
  await visit(page, 'imports-purpose');

  await row.getByRole('link').click();
  await expect(page.locator('main h1')).toContainText('Import');
  await expect(page.locator('dd[data-left-out]')).toHaveText('1 restricted, 1 consent withdrawn');
  await expect(page.locator('main dl')).toContainText('crm_sync');
  await visit(page, 'import-purpose-detail');

  // Delete all: behind a confirmation; the log stays, marked deleted.
  await go(page, 'Imports');
  await page.getByRole('button', { name: 'Delete all imports' }).click();
  const dialog = page.getByRole('dialog');
  await expect(dialog).toContainText('Every stored file and row of this account is deleted now');
  await accessible(page, 'imports (delete all dialog)');
  await shoot(page, 'imports-delete-all');
  // Cancelled first: nothing happens.
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await expect(dialog).toBeHidden();
  await expect(page.locator('tr[data-import]').first()).toContainText('delivered');
  await page.getByRole('button', { name: 'Delete all imports' }).click();
  await dialog.getByRole('button', { name: 'Delete all imports' }).click();
  await expect(page.getByRole('status').filter({ hasText: 'Deleted the data of' })).toContainText(/Deleted the data of \d+ imports/);
  await expect(page.locator('tr[data-import]').first()).toContainText('deleted');
  await visit(page, 'imports-deleted-all');
  watcher.check();
});
