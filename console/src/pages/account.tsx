import { useEffect, useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { atLeast } from '../auth';
import { useApp } from '../context';
import { Field, Notice, ProblemBanner, Status, Time, bytes, type Submit } from '../ui';

/** `GET /account/exports/{id}` (openapi `AccountExport`). */
interface AccountExport {
  job_id: string;
  status: 'pending' | 'running' | 'ready' | 'failed';
  phase: string;
  requested_at: string;
  completed_at?: string | null;
  expires_at?: string | null;
  bytes?: number | null;
  error?: string | null;
  download?: { url: string; expires_at: string; bytes: number; format: 'tar' } | null;
}

/** How often a running copy is looked at again: the job advances one step per stream record. */
const POLL_MS = 2000;

interface Purge {
  job_id: string;
  status: string;
  connections_deleted: number;
  grants_revoked: number;
  schedule_removed: boolean;
}

export function Account() {
  const { api, session } = useApp();
  const admin = atLeast(session.role, 'admin');
  const [typed, setTyped] = useState('');
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [purge, setPurge] = useState<Purge | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Submit) => {
    e.preventDefault();
    setBusy(true);
    setProblem(null);
    try {
      setPurge(await api.delete<Purge>('/account', { confirm: typed }));
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <>
      <h1 tabIndex={-1}>Account</h1>
      <dl>
        <dt>Account (tenant)</dt>
        <dd>
          <code>{session.tenant}</code>
        </dd>
        <dt>Your role</dt>
        <dd>{session.role}</dd>
        <dt>Signed in as</dt>
        <dd>{session.name || session.subject}</dd>
      </dl>
      {admin ? <AccountCopy /> : null}
      <section aria-labelledby="delete-heading">
        <h2 id="delete-heading">Delete the account</h2>
        <p>
          Deleting the account deletes every OAuth token and the export schedule at once, then purges every record of
          the account within minutes (at most 30 days in backups) and issues a certificate of deletion.
        </p>
        {purge ? (
          <Notice>
            Deletion started (job <code>{purge.job_id}</code>, {purge.status}): {purge.connections_deleted} connections
            deleted, {purge.grants_revoked} grants revoked, schedule {purge.schedule_removed ? 'removed' : 'was not set'}.
          </Notice>
        ) : null}
        {admin ? (
          <form onSubmit={submit} novalidate>
            <ProblemBanner problem={problem} />
            <Field
              label={
                <>
                  Type the account id <code>{session.tenant}</code> to confirm
                </>
              }
              field="confirm"
              problem={problem}
            >
              {(a) => <input {...a} autocomplete="off" value={typed} onInput={(e) => setTyped(e.currentTarget.value)} />}
            </Field>
            <button type="submit" class="danger" disabled={typed !== session.tenant || busy} aria-busy={busy ? 'true' : undefined}>
              Delete this account and all its data
            </button>
          </form>
        ) : (
          <p>Only an admin can delete the account.</p>
        )}
      </section>
    </>
  );
}

/** The account holder's own copy: one tar archive of everything custody holds for the account. */
function AccountCopy() {
  const { api } = useApp();
  const [job, setJob] = useState<AccountExport | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [busy, setBusy] = useState(false);
  const running = job !== null && (job.status === 'pending' || job.status === 'running');

  useEffect(() => {
    if (!job || !running) return undefined;
    const timer = window.setTimeout(async () => {
      try {
        setJob(await api.get<AccountExport>(`/account/exports/${job.job_id}`));
      } catch (err) {
        setProblem(asProblem(err));
      }
    }, POLL_MS);
    return () => window.clearTimeout(timer);
  }, [job, running]);

  const start = async (e: Submit) => {
    e.preventDefault();
    setBusy(true);
    setProblem(null);
    try {
      setJob(await api.post<AccountExport>('/account/export'));
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="copy-heading" data-account-export={job?.status ?? 'none'}>
      <h2 id="copy-heading">A copy of the account</h2>
      <p>
        One archive of everything custody holds for this account: connections (without tokens), settings, the export
        log, imports and their files, privacy requests, consent records and the audit log. Secrets are never in it.
      </p>
      <form onSubmit={start} novalidate>
        <ProblemBanner problem={problem} />
        <button type="submit" disabled={busy || running} aria-busy={busy || running ? 'true' : undefined}>
          {running ? 'Building the copy…' : 'Build a copy of the account'}
        </button>
      </form>
      {job ? (
        <div role="status">
          <p>
            Copy <code>{job.job_id}</code>: <Status value={job.status} /> ({job.phase.replace('_', ' ')}), requested{' '}
            <Time value={job.requested_at} />.
          </p>
          {job.download ? (
            <p>
              <a href={job.download.url} download={`custody-account-${job.job_id}.tar`}>
                Download the copy
              </a>{' '}
              ({bytes(job.download.bytes)}, tar; link valid until <Time value={job.download.expires_at} />, the archive is
              deleted <Time value={job.expires_at} />)
            </p>
          ) : null}
          {job.status === 'failed' ? (
            <Notice tone="bad">The copy could not be built ({job.error ?? 'unknown error'}). Start it again.</Notice>
          ) : null}
        </div>
      ) : null}
    </section>
  );
}
