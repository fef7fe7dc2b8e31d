import { defineConfig } from '@playwright/test';

// Drives Debian's Chromium (apt-get install chromium); Playwright's own browser
// download is never used. The tests run against a stack started by `make up`.
export default defineConfig({
  testDir: 'tests',
  timeout: 6 * 60_000,
  expect: { timeout: 20_000 },
  workers: 1,
  retries: 0,
  reporter: [['list']],
  outputDir: 'test-results',
  use: {
    headless: true,
    viewport: { width: 1280, height: 900 },
    actionTimeout: 20_000,
    navigationTimeout: 30_000,
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-dev-shm-usage'],
    },
  },
});
