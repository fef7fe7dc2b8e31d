// The running local stack (`make up`), read from its state file.
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';

export interface Stack {
  console: string;
  /** Where a page embedding <custody-importer> runs: the console's server under another name. */
  importerOrigin: string;
  api: string;
  webdav: { url: string; username: string; password: string };
  destination: { url: string; secret: string };
  /** Clicking Install in the simulated HighLevel Marketplace (a browser GET). */
  marketplaceInstall: string;
}

export function stack(): Stack {
  const path = process.env.CUSTODY_STATE ?? resolve(import.meta.dirname, '../../.local/stack.json');
  let state: Record<string, any>;
  try {
    state = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`no local stack state at ${path} (run \`make up\` first): ${err}`);
  }
  const consoleUrl = process.env.CONSOLE_URL ?? (typeof state.console === 'string' ? state.console : state.console?.url);
  if (!consoleUrl) throw new Error(`${path} has no "console" URL: the local stack does not serve the console yet`);
  return {
    console: consoleUrl.replace(/\/+$/, ''),
    importerOrigin: String(state.importer_origin ?? '').replace(/\/+$/, ''),
    api: String(state.base_url ?? ''),
    webdav: state.webdav,
    destination: state.destination,
    marketplaceInstall: String(state.highlevel_marketplace_install ?? ''),
  };
}
