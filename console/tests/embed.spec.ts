// Embedding the importer with an import-session token: an operator mints a session in
// the console for the stack's destination, bound to the importer origin; a page on that
// origin (another app's, as far as the browser knows) loads custody-importer.js from the
// console and imports a CSV through <custody-importer> (store mode, a bad row caught
// before upload); the import shows in the console; the token is refused from any other
// origin (403) and, once the session is revoked, everywhere (401).
import { expect, test, type Page } from '@playwright/test';
import { accessible, go, logIn, shoot, watch } from './helpers';
import { stack } from './stack';

const TENANT = `embed${Date.now().toString(36)}`;

const CSV = [
  'contact_id,name,email,phone',
  'e-001,Ada Lovelace,ada@example.org,+447700900101',
  'e-002,Bad Row,not-an-email,+447700900102',
  'e-003,Grace Hopper,grace@example.org,+447700900103',
  '',
].join('\r\n');

/** Another app's page: the module script from the console's origin and the element. */
function hostPage(consoleOrigin: string, api: string, token: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Contacts — an app embedding custody</title>
<style>body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }</style>
<script type="module" src="${consoleOrigin}/custody-importer.js"></script>
</head>
<body>
<main>
<h1>Import your contacts</h1>
<custody-importer api-url="${api}" token="${token}"></custody-importer>
</main>
</body>
</html>`;
}

/** A call of the embedded API from `page` (so with its Origin), answering the status. */
async function embedCall(page: Page, url: string, token: string, body?: unknown): Promise<number> {
  return page.evaluate(
    async ([url, token, body]) => {
      const response = await fetch(url as string, {
        method: body === null ? 'GET' : 'POST',
        headers: { authorization: `Bearer ${token}`, ...(body === null ? {} : { 'content-type': 'application/json' }) },
        body: body === null ? undefined : JSON.stringify(body),
        credentials: 'omit',
      });
      return response.status;
    },
    [url, token, body ?? null] as const,
  );
}

test('operator: embed the importer on another origin with an import-session token', async ({ page, context, request }) => {
  const s = stack();
  expect(s.importerOrigin, 'the stack state names the importer origin').toMatch(/^http:\/\/localhost:\d+$/);
  expect(s.importerOrigin).not.toBe(s.console);
  const watcher = watch(page);

  // 1. Mint a session in the console, bound to the importer origin.
  await page.goto(s.console + '/');
  await logIn(page, TENANT, 'operator');
  await go(page, 'Imports');
  const embed = page.getByRole('region', { name: 'Embed the importer' });
  await expect(embed).toBeVisible();
  // A problem names its field.
  await embed.getByLabel('Webhook for embedded imports (URL)').fill(s.destination.url);
  await embed.getByLabel('Token lifetime (minutes)').fill('90');
  await embed.getByRole('button', { name: 'Create import session' }).click();
  await expect(embed.locator('.field-error[data-field="lifetime_minutes"]')).toBeVisible();
  await expect(embed.getByLabel('Token lifetime (minutes)')).toHaveAttribute('aria-invalid', 'true');
  await embed.getByLabel('Token lifetime (minutes)').fill('15');
  await embed.getByLabel('Secret for signing batches (optional)').fill(s.destination.secret);
  await embed.getByLabel('Page origin allowed to use the token (optional)').fill(s.importerOrigin);
  await embed.getByRole('button', { name: 'Create import session' }).click();
  const token = (await embed.getByTestId('session-token').textContent({ timeout: 20_000 }))!.trim();
  expect(token).toMatch(/^cis_/);
  await expect(embed.getByRole('status').filter({ hasText: 'shown this once' })).toContainText(s.importerOrigin);
  // Our own secret: custody generated none to show.
  await expect(embed.getByTestId('session-secret')).toHaveCount(0);
  const snippet = await embed.getByTestId('embed-snippet').textContent();
  expect(snippet).toBe(
    `<script type="module" src="${s.console}/custody-importer.js"></script>\n` +
      `<custody-importer api-url="${s.api}" token="${token}"></custody-importer>`,
  );
  await accessible(page, 'imports (import session)');
  await shoot(page, 'imports-embed');

  // 2. Another app's page on the importer origin (only this URL is fulfilled here;
  //    the script, the API and the upload go to the real servers).
  // Chromium's Local Network Access: a fulfilled page has no address of its own, so
  // it counts as public, and its requests to the stack on loopback need the
  // permission a user would grant (production's API is not on loopback).
  await context.grantPermissions(['local-network-access'], { origin: s.importerOrigin });
  const host = await context.newPage();
  const hostWatcher = watch(host);
  const hostUrl = `${s.importerOrigin}/embed-host.html`;
  await host.route(hostUrl, (route) =>
    route.fulfill({ status: 200, contentType: 'text/html; charset=utf-8', body: hostPage(s.console, s.api, token) }),
  );
  await host.goto(hostUrl);
  await host.evaluate(() => {
    document.addEventListener('custody-import', (e) => {
      (window as unknown as { imported: unknown }).imported = (e as CustomEvent).detail;
    });
  });
  const element = host.locator('custody-importer');
  await expect(element.getByLabel('File (CSV or JSON Lines)')).toBeVisible();
  // The session fixes the destination: the element asks for none.
  await expect(element.getByLabel('Destination webhook URL')).toHaveCount(0);
  await expect(element.getByLabel('Signing secret (optional)')).toHaveCount(0);
  await element.getByLabel('File (CSV or JSON Lines)').setInputFiles({
    name: 'contacts.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from(CSV),
  });
  await expect(element.getByText('contacts.csv: 3 rows, 4 columns')).toBeVisible();
  await expect(element.getByLabel('Identifier in column email')).toHaveValue('email');
  await element.getByLabel('Column email is required').check();
  await element.getByRole('button', { name: 'Validate rows' }).click();
  const rowErrors = element.locator('table.row-errors');
  await expect(rowErrors).toContainText('email is not a valid email address');
  await expect(rowErrors.locator('tbody tr')).toHaveCount(1);
  await expect(rowErrors.locator('tbody tr td').first()).toHaveText('3');
  await expect(element.getByText('2 valid rows, 1 rows with errors')).toBeVisible();
  await element.getByRole('button', { name: 'Upload 2 valid rows' }).click();
  const result = element.getByRole('status').filter({ hasText: /^Import / });
  await expect(result).toContainText('delivered', { timeout: 90_000 });
  await expect(result).toContainText('2 rows valid, 2 delivered');
  const handle = await host.waitForFunction(() => (window as unknown as { imported?: unknown }).imported);
  const imported = (await handle.jsonValue()) as { id: string; status: string };
  const { id, status } = imported;
  expect(status).toBe('delivered');
  await expect(result).toContainText(id);
  await accessible(host, 'embedded importer');
  await shoot(host, 'embedded-importer');

  // 3. The token reads its own import from the session's origin only: another origin
  //    is refused (403), from a browser page (the console's origin, which CORS lets read
  //    the answer) and from any client naming an Origin.
  expect(await embedCall(host, `${s.api}/embed/imports/${id}`, token)).toBe(200);
  expect(await embedCall(page, `${s.api}/embed/imports/${id}`, token)).toBe(403);
  const foreign = await request.get(`${s.api}/embed/imports/${id}`, {
    headers: { authorization: `Bearer ${token}`, origin: 'https://elsewhere.example' },
  });
  expect(foreign.status()).toBe(403);

  // 4. Revoke the session (the console page still shows it): the token is refused
  //    from then on, even from its own origin (401).
  await page.getByRole('button', { name: /^Revoke session / }).click();
  await expect(embed.getByRole('status').filter({ hasText: 'revoked' })).toBeVisible();
  await expect(embed.getByTestId('session-token')).toHaveCount(0);
  expect(
    await embedCall(host, `${s.api}/embed/imports`, token, {
      format: 'csv',
      mode: 'store',
      retention_class: 'import-30d',
      size: 10,
      required_columns: [],
    }),
  ).toBe(401);
  hostWatcher.check();
  await host.close();

  // 5. The embedded import is in the console's import log.
  await go(page, 'Overview');
  await go(page, 'Imports');
  const row = page.locator(`tr[data-import="${id}"]`);
  await expect(row).toContainText('delivered');
  await expect(row).toContainText('2 / 0 / 2');
  watcher.check();
});
