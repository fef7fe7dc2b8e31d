import { useEffect, useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { atLeast } from '../auth';
import { useApp } from '../context';
import type { ConnectionSummary } from '../types';
import { Confirm, Loading, Notice, ProblemBanner, Status, Time, useLoad } from '../ui';

export const PROVIDERS: { id: string; name: string }[] = [
  { id: 'highlevel', name: 'HighLevel' },
  { id: 'google', name: 'Google' },
];

const RESULTS: Record<string, string> = {
  connected: 'Connected.',
  invalid_state: 'The connection attempt expired or came from another browser. Try again.',
  access_denied: 'Access was denied at the provider.',
  provider_error: 'The provider reported an error.',
  issuer_mismatch: 'The provider answered from an unexpected issuer; nothing was stored.',
  invalid_request: 'The provider sent an invalid answer.',
  exchange_failed: 'The authorization code could not be exchanged for tokens.',
  internal_error: 'Something went wrong on our side; nothing was stored.',
};

interface Pending {
  provider: string;
  installation: string;
  claimToken: string;
}

/** Reads (and then removes) `?result=…&provider=…` and a Marketplace install's claim. */
function readReturn(): { result?: string; provider?: string; pending?: Pending } {
  const query = new URLSearchParams(location.search);
  const result = query.get('result') ?? undefined;
  const provider = query.get('provider') ?? undefined;
  let pending: Pending | undefined;
  if (result === 'install_pending' && provider) {
    const fragment = new URLSearchParams(location.hash.replace(/^#/, ''));
    const installation = query.get('installation') ?? '';
    const claimToken = fragment.get('claim_token') ?? '';
    if (installation && claimToken) pending = { provider, installation, claimToken };
  }
  if (result) history.replaceState(null, '', location.pathname);
  return { result, provider, pending };
}

export function Connections() {
  const { api, session } = useApp();
  const [back] = useState(readReturn);
  const [pending, setPending] = useState<Pending | undefined>(back.pending);
  const list = useLoad(() => api.get<{ connections: ConnectionSummary[] }>('/connections'));
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [confirming, setConfirming] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const admin = atLeast(session.role, 'admin');

  const connect = async (provider: string) => {
    setBusy(provider);
    setProblem(null);
    try {
      const started = await api.get<{ authorize_url: string }>(`/connect/${provider}`, {
        query: { return_url: `${location.origin}/connections` },
      });
      location.assign(started.authorize_url);
    } catch (err) {
      setProblem(asProblem(err));
      setBusy(null);
    }
  };

  const disconnect = async (provider: string) => {
    setProblem(null);
    try {
      const done = await api.delete<{ deleted: boolean; revoked: boolean; schedule_removed: boolean }>(
        `/connections/${provider}`,
      );
      setNotice(
        `${name(provider)} disconnected: tokens ${done.deleted ? 'deleted' : 'were not stored'}` +
          `${done.revoked ? ', grant revoked at the provider' : ''}` +
          `${done.schedule_removed ? ', export schedule removed' : ''}.`,
      );
      await list.reload();
    } catch (err) {
      setProblem(asProblem(err));
    }
  };

  const claim = async (p: Pending, attempt = 0): Promise<void> => {
    setBusy('claim');
    setProblem(null);
    try {
      const claimed = await api.post<{ provider: string; replaced: boolean }>(`/installations/${p.provider}/claim`, {
        installation: p.installation,
        claim_token: p.claimToken,
      });
      setPending(undefined);
      setNotice(`${name(claimed.provider)} installation claimed${claimed.replaced ? ' (it replaced the earlier connection)' : ''}.`);
      await list.reload();
    } catch (err) {
      const problem = asProblem(err);
      // HighLevel's INSTALL webhook normally arrives within seconds.
      if (problem.slug === 'install-unconfirmed' && attempt < 5) {
        setNotice('Waiting for HighLevel to confirm the install…');
        await new Promise((r) => setTimeout(r, 2000));
        return claim(p, attempt + 1);
      }
      setProblem(problem);
    } finally {
      setBusy(null);
    }
  };

  useEffect(() => {
    if (back.result === 'connected') void list.reload();
  }, []);

  const byProvider = new Map((list.data?.connections ?? []).map((c) => [c.provider, c]));
  const resultText = back.result && back.result !== 'install_pending' ? RESULTS[back.result] ?? back.result : null;

  return (
    <>
      <h1 tabIndex={-1}>Connections</h1>
      <p>custody reads conversations from these providers with OAuth. Tokens are stored encrypted and never shown.</p>
      {resultText ? (
        <Notice tone={back.result === 'connected' ? 'ok' : 'bad'}>
          {back.provider ? `${name(back.provider)}: ` : ''}
          {resultText}
        </Notice>
      ) : null}
      {notice ? <Notice>{notice}</Notice> : null}
      <ProblemBanner problem={problem ?? list.problem} />
      {pending ? (
        <section aria-labelledby="claim-heading" class="callout">
          <h2 id="claim-heading">Installation from the {name(pending.provider)} Marketplace</h2>
          <p>
            An install of <code>{pending.installation}</code> is waiting to be claimed (for 15 minutes).
          </p>
          {admin ? (
            <button type="button" onClick={() => claim(pending)} disabled={busy === 'claim'} aria-busy={busy === 'claim' ? 'true' : undefined}>
              Claim for {session.tenant}
            </button>
          ) : (
            <p>Only an admin can claim it for this account.</p>
          )}
        </section>
      ) : null}
      {list.loading && !list.data ? <Loading what="connections" /> : null}
      {PROVIDERS.map((p) => {
        const c = byProvider.get(p.id);
        return (
          <article key={p.id} aria-labelledby={`provider-${p.id}`} data-provider={p.id}>
            <header>
              <h2 id={`provider-${p.id}`}>
                {p.name} {c ? <Status value={c.status} /> : <span class="muted">not connected</span>}
              </h2>
            </header>
            {c ? (
              <dl>
                <dt>Account</dt>
                <dd>
                  {[
                    c.account.location_id && `location ${c.account.location_id}`,
                    c.account.company_id && `company ${c.account.company_id}`,
                    c.account.subject && `user ${c.account.subject}`,
                  ]
                    .filter(Boolean)
                    .join(', ') || '—'}
                </dd>
                <dt>Scopes</dt>
                <dd>{c.scopes.length ? c.scopes.map((s) => <code key={s} class="scope">{s}</code>) : '—'}</dd>
                <dt>Connected</dt>
                <dd>
                  <Time value={c.connected_at} />
                </dd>
                <dt>Access token renews</dt>
                <dd>
                  <Time value={c.access_expires_at} />
                </dd>
              </dl>
            ) : null}
            {c?.status === 'needs_reconsent' ? (
              <p>The provider no longer accepts the stored grant: exports stop until an admin connects again.</p>
            ) : null}
            {admin ? (
              <footer>
                <button type="button" onClick={() => connect(p.id)} disabled={busy === p.id} aria-busy={busy === p.id ? 'true' : undefined}>
                  {c ? `Reconnect ${p.name}` : `Connect ${p.name}`}
                </button>{' '}
                {c ? (
                  <button type="button" class="danger" onClick={() => setConfirming(p.id)}>
                    Disconnect {p.name}
                  </button>
                ) : null}
              </footer>
            ) : null}
          </article>
        );
      })}
      {confirming ? (
        <Confirm
          title={`Disconnect ${name(confirming)}?`}
          confirmLabel={`Disconnect ${name(confirming)}`}
          onConfirm={() => disconnect(confirming)}
          onClose={() => setConfirming(null)}
        >
          <p>
            The stored tokens are <strong>deleted at once</strong>, the export schedule is removed and custody asks{' '}
            {name(confirming)} to revoke the grant. Exports stop until you connect again.
          </p>
        </Confirm>
      ) : null}
    </>
  );
}

function name(provider: string): string {
  return PROVIDERS.find((p) => p.id === provider)?.name ?? provider;
}
