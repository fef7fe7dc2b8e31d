import { useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { atLeast } from '../auth';
import { useApp } from '../context';
import { Field, Notice, ProblemBanner, type Submit } from '../ui';

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
