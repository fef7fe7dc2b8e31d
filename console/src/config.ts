/** Runtime configuration, written at deploy time next to index.html. */
export interface Config {
  apiUrl: string;
  authority: string;
  clientId: string;
  redirectPath: string;
  stage: string;
  scope?: string;
}

export async function loadConfig(): Promise<Config> {
  const response = await fetch('/config.json', { cache: 'no-store', credentials: 'same-origin' });
  if (!response.ok) throw new Error(`/config.json answered ${response.status}`);
  const raw = (await response.json()) as Partial<Config>;
  for (const key of ['apiUrl', 'authority', 'clientId'] as const) {
    if (typeof raw[key] !== 'string' || !raw[key]) throw new Error(`/config.json lacks "${key}"`);
  }
  return {
    apiUrl: raw.apiUrl!.replace(/\/+$/, ''),
    authority: raw.authority!,
    clientId: raw.clientId!,
    redirectPath: raw.redirectPath || '/callback',
    stage: raw.stage || '',
    scope: raw.scope,
  };
}
