// The S3 destination form on a fresh tenant: bucket, prefix and role ARN are sent as
// the API takes them (it has no region field: custody writes to the bucket's own
// region), and what the API answers on save and on "Test destination" is shown. The
// local stack cannot assume a customer's role, so it refuses both (422
// destination-refused naming destination.role_arn); the console must say so, by the
// field.
import { expect, test } from '@playwright/test';
import { accessible, go, logIn, shoot, watch } from './helpers';
import { stack } from './stack';

const TENANT = `exp${Date.now().toString(36)}`;
const ROLE = 'arn:aws:iam::123456789012:role/custody-export';

test('admin: an S3 destination is sent as typed, and the API answer is shown by field', async ({ page }) => {
  const watcher = watch(page);
  await page.goto(stack().console + '/');
  await logIn(page, TENANT, 'admin');
  await go(page, 'Exports');
  await page.getByLabel('When').selectOption({ label: 'Every day at 03:00' });
  await page.getByLabel('Time zone').fill('Europe/Berlin');
  await page.getByLabel('Amazon S3').check();
  await page.getByLabel('Bucket').fill('acme-conversation-exports');
  await page.getByLabel('Prefix (optional)').fill('custody/');
  await page.getByLabel('Role ARN').fill(ROLE);
  await accessible(page, 'exports (S3 form)');

  const sent: Record<string, unknown>[] = [];
  page.on('request', (r) => {
    if (/\/export\/(settings|destination\/test)$/.test(r.url()) && r.method() !== 'GET') sent.push(JSON.parse(r.postData() ?? '{}'));
  });

  // Save: whatever the API answers is shown; on this stack, the role is refused.
  await page.getByRole('button', { name: 'Save export settings' }).click();
  const refusedOrSaved = page.getByRole('alert').or(page.getByRole('status').filter({ hasText: 'Settings saved' }));
  await expect(refusedOrSaved.first()).toBeVisible({ timeout: 60_000 });
  const saveAlert = page.getByRole('alert');
  if (await saveAlert.count()) {
    await expect(saveAlert).toContainText('422');
    const field = page.locator('small.field-error[data-field]');
    await expect(field).toHaveAttribute('data-field', /^destination\./);
    await expect(page.getByLabel('Role ARN')).toHaveAttribute('aria-invalid', 'true');
  }
  expect(sent[0]?.destination).toEqual({ type: 's3', bucket: 'acme-conversation-exports', prefix: 'custody/', role_arn: ROLE });

  // Test destination: the API's answer, a result or a problem naming the field.
  await page.getByRole('button', { name: 'Test destination' }).click();
  const answer = page.getByRole('alert').or(page.getByRole('status').filter({ hasText: 'Destination test' }));
  await expect(answer.first()).toBeVisible({ timeout: 60_000 });
  await expect(page.getByRole('button', { name: 'Test destination' })).toBeEnabled();
  const alert = page.getByRole('alert');
  if (await alert.count()) {
    await expect(alert).toContainText(/Destination refused|Invalid/);
    await expect(alert).toContainText('Field: destination.');
    const field = page.locator('small.field-error[data-field]');
    await expect(field).toBeVisible();
    await expect(field).toHaveAttribute('data-field', /^destination\./);
  } else {
    await expect(page.getByRole('status').filter({ hasText: 'Destination test' })).toContainText('(S3)');
  }
  expect(sent[1]?.destination).toEqual({ type: 's3', bucket: 'acme-conversation-exports', prefix: 'custody/', role_arn: ROLE });
  await accessible(page, 'exports (S3 destination tested)');
  await shoot(page, 'exports-s3-test-destination');
  watcher.check();
});
