// "Embed the importer" (Imports page, operators and admins): mints an import-session
// token (POST /import-sessions) for another app's page to run <custody-importer> with,
// shows it once with a snippet to paste, and revokes it (DELETE /import-sessions/{id}).
import { useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { useApp } from '../context';
import type { ImportSessionCreated } from '../types';
import { Field, Notice, ProblemBanner, Time } from '../ui';

/** An HTML attribute value, quoted. */
function attr(value: string): string {
  return value.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** What the embedding page pastes: the module script and the element. */
export function embedSnippet(consoleOrigin: string, apiUrl: string, token: string): string {
  return (
    `<script type="module" src="${attr(consoleOrigin)}/custody-importer.js"></script>\n` +
    `<custody-importer api-url="${attr(apiUrl)}" token="${attr(token)}"></custody-importer>`
  );
}

export function EmbedImporter() {
  const { api, config } = useApp();
  const [url, setUrl] = useState('');
  const [secret, setSecret] = useState('');
  const [origin, setOrigin] = useState('');
  const [lifetime, setLifetime] = useState('15');
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [minted, setMinted] = useState<ImportSessionCreated | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [copied, setCopied] = useState<string | null>(null);

  const mint = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setProblem(null);
    setNotice(null);
    setCopied(null);
    try {
      const minutes = Number(lifetime.trim());
      const created = await api.post<ImportSessionCreated>('/import-sessions', {
        destination: { url: url.trim(), ...(secret ? { secret } : {}) },
        ...(origin.trim() ? { origin: origin.trim() } : {}),
        ...(lifetime.trim() ? { lifetime_minutes: Number.isInteger(minutes) ? minutes : lifetime.trim() } : {}),
      });
      setMinted(created);
      setSecret('');
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setBusy(false);
    }
  };

  const revoke = async () => {
    if (!minted) return;
    setProblem(null);
    try {
      await api.delete(`/import-sessions/${minted.session.id}`);
      setNotice(`Session ${minted.session.id.slice(-8)} revoked: its token no longer works.`);
      setMinted(null);
      setCopied(null);
    } catch (err) {
      setProblem(asProblem(err));
    }
  };

  const snippet = minted ? embedSnippet(window.location.origin, config.apiUrl, minted.token) : '';
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(snippet);
      setCopied('Snippet copied.');
    } catch {
      setCopied('Could not copy: select the snippet and copy it yourself.');
    }
  };

  return (
    <section aria-labelledby="embed-heading">
      <h2 id="embed-heading">Embed the importer</h2>
      <p>
        Another app's page can run this importer as <code>&lt;custody-importer&gt;</code> with a short-lived
        import-session token. The session fixes where the rows go; the page cannot change it. The page's origin must be
        one the API allows (<code>ImporterOrigins</code>).
      </p>
      <ProblemBanner problem={problem} />
      {notice ? <Notice>{notice}</Notice> : null}
      <form onSubmit={mint} aria-labelledby="embed-heading" novalidate>
        <Field label="Webhook for embedded imports (URL)" field="destination.url" problem={problem} hint="Rows imported with the token are pushed here in signed batches.">
          {(a) => <input {...a} type="url" required value={url} onInput={(e) => setUrl(e.currentTarget.value)} />}
        </Field>
        <Field
          label="Secret for signing batches (optional)"
          field="destination.secret"
          problem={problem}
          hint="32 bytes or more. Left empty, custody generates one and shows it once."
        >
          {(a) => <input {...a} type="password" autocomplete="new-password" value={secret} onInput={(e) => setSecret(e.currentTarget.value)} />}
        </Field>
        <Field
          label="Page origin allowed to use the token (optional)"
          field="origin"
          problem={problem}
          hint="Like https://app.example.com (no path). Set, requests from any other origin are refused."
        >
          {(a) => <input {...a} type="url" placeholder="https://app.example.com" value={origin} onInput={(e) => setOrigin(e.currentTarget.value)} />}
        </Field>
        <Field label="Token lifetime (minutes)" field="lifetime_minutes" problem={problem} hint="1 to 60.">
          {(a) => (
            <input {...a} type="number" inputMode="numeric" min={1} max={60} step={1} value={lifetime} onInput={(e) => setLifetime(e.currentTarget.value)} />
          )}
        </Field>
        <button type="submit" disabled={busy || !url.trim()} aria-busy={busy ? 'true' : undefined}>
          Create import session
        </button>
      </form>
      {minted ? (
        <div class="minted" data-session={minted.session.id}>
          <Notice>
            Session <code>{minted.session.id.slice(-8)}</code> for {minted.session.destination_host}
            {minted.session.origin ? (
              <>
                , from <code>{minted.session.origin}</code> only
              </>
            ) : (
              ', from any allowed origin'
            )}
            , valid until <Time value={minted.session.expires_at} />. The token is shown this once.
          </Notice>
          <dl>
            <dt>Token</dt>
            <dd>
              <code class="hash" data-testid="session-token">
                {minted.token}
              </code>
            </dd>
            {minted.destination_secret ? (
              <>
                <dt>The generated signing secret (shown this once)</dt>
                <dd>
                  <code class="hash" data-testid="session-secret">
                    {minted.destination_secret}
                  </code>
                </dd>
              </>
            ) : null}
          </dl>
          <h3 id="snippet-heading">Paste into the embedding page</h3>
          <pre role="region" aria-labelledby="snippet-heading" tabIndex={0}>
            <code data-testid="embed-snippet">{snippet}</code>
          </pre>
          <div class="buttons">
            <button type="button" class="secondary" onClick={copy}>
              Copy snippet
            </button>
            <button type="button" class="danger" onClick={revoke} aria-label={`Revoke session ${minted.session.id.slice(-8)}`}>
              Revoke
            </button>
          </div>
          {copied ? <p role="status">{copied}</p> : null}
        </div>
      ) : null}
    </section>
  );
}
