import { Fragment } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { atLeast } from '../auth';
import { useApp } from '../context';
import type { AuditClass, AuditEntry, AuditPage, AuditVerification } from '../types';
import { Badge, Field, Loading, ProblemBanner, Table, when, useLoad, type Submit, type Tone } from '../ui';

const PAGE_SIZE = 50;

const CLASSES: [AuditClass, string, string][] = [
  ['evidence', 'Evidence', 'privacy requests, consent, deletions, connections, settings; kept at least two years'],
  ['activity', 'Activity', 'export and import work; kept 90 days'],
];

const OUTCOME_TONE: Record<string, Tone> = { success: 'ok', failure: 'bad', denied: 'warn' };

/** The start of a long value (a SHA-256, a pseudonym), the whole in a tooltip and for screen readers. */
function Hash({ value, keep = 12 }: { value: string; keep?: number }) {
  if (!value) return <span>—</span>;
  if (value.length <= keep + 2) return <code>{value}</code>;
  return (
    <code class="hash-short" title={value}>
      <span aria-hidden="true">{value.slice(0, keep)}…</span>
      <span class="visually-hidden">{value}</span>
    </code>
  );
}

function detailsOf(entry: AuditEntry): Record<string, unknown> {
  if (typeof entry.details !== 'string') return entry.details ?? {};
  try {
    const parsed: unknown = JSON.parse(entry.details);
    return parsed && typeof parsed === 'object' ? (parsed as Record<string, unknown>) : { value: parsed };
  } catch {
    return entry.details ? { text: entry.details } : {};
  }
}

function compact(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > 40 ? `${text.slice(0, 39)}…` : text;
}

/** A user's `sub` is long: its first 8 characters, the whole for screen readers and on hover. */
function Actor({ value }: { value: string }) {
  if (value.length <= 20 || value.includes(':')) return <span>{value}</span>;
  return (
    <span title={value}>
      <span aria-hidden="true">{value.slice(0, 8)}…</span>
      <span class="visually-hidden">{value}</span>
    </span>
  );
}

/** Break `noun.verb` after its `.` and `KIND#id` after its `#` (or, when narrow, anywhere in the id). */
function Breakable({ value, at, anywhere }: { value: string; at: string; anywhere?: boolean }) {
  const parts = value.split(at);
  return (
    <code class={anywhere ? 'breakable anywhere' : 'breakable'}>
      {parts.map((part, i) => (
        <Fragment key={i}>
          {i ? <wbr /> : null}
          {i < parts.length - 1 ? part + at : part}
        </Fragment>
      ))}
    </code>
  );
}

const day = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: 'medium' });

/** Date and time (with seconds) on two lines. */
function At({ value }: { value: string }) {
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return <span>{value}</span>;
  return (
    <time dateTime={value}>
      {day.format(date)}
      <br />
      {clock.format(date)}
    </time>
  );
}

function Details({ entry }: { entry: AuditEntry }) {
  const details = Object.entries(detailsOf(entry));
  if (!details.length && !entry.subject) return <span>—</span>;
  return (
    <ul class="kv">
      {entry.subject ? (
        <li>
          subject=<Hash value={entry.subject} keep={14} />
        </li>
      ) : null}
      {details.map(([key, value]) => (
        <li key={key} title={typeof value === 'string' ? value : JSON.stringify(value)}>
          {key}=<span class="kv-value">{compact(value)}</span>
        </li>
      ))}
    </ul>
  );
}

/** `YYYY-MM-DD` (a UTC day) plus `days`, as RFC 3339 midnight UTC. */
function dayStart(day: string, days = 0): string {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + days);
  return date.toISOString().replace('.000Z', 'Z');
}

interface Query {
  class: AuditClass;
  action: string;
  from: string;
  to: string;
}

export function Audit() {
  const { session } = useApp();
  return (
    <>
      <h1 tabIndex={-1}>Audit</h1>
      <p>
        Everything custody does for this account is recorded in two append-only logs, each a hash chain: every entry's
        hash covers the one before it, and a signed checkpoint seals each day. <strong>Evidence</strong> (privacy
        requests, consent, deletions, connections, settings) is kept at least two years; <strong>activity</strong>{' '}
        (export and import work) 90 days.
      </p>
      {atLeast(session.role, 'admin') ? (
        <>
          <Verification />
          <Entries />
        </>
      ) : (
        <p class="notice notice-neutral" data-testid="admins-only">
          The audit log is for <strong>admins only</strong>. Ask an admin of this account to review it or to verify its
          chains.
        </p>
      )}
    </>
  );
}

function Verification() {
  const { api } = useApp();
  const result = useLoad(async () => ({ at: new Date().toISOString(), ...(await api.get<AuditVerification>('/audit/verify')) }));
  const v = result.data;
  return (
    <section aria-labelledby="verify-heading">
      <h2 id="verify-heading">Verification</h2>
      <ProblemBanner problem={result.problem} />
      {result.loading && !v ? <Loading what="the verification of both chains" /> : null}
      {v ? (
        <>
          <div
            class={`verdict verdict-${v.verified ? 'ok' : 'bad'}`}
            data-audit-verified={String(v.verified)}
            role="status"
          >
            <p>
              <strong class="verdict-word">{v.verified ? '✓ Verified' : '✗ Broken'}</strong>
              {v.verified ? (
                <> Both chains are complete, unaltered and linked, and every checkpoint's signature is valid.</>
              ) : (
                <>
                  {' '}
                  The {v.broken?.class ?? ''} chain does not verify: {v.broken?.cause ?? 'no cause given'}.
                </>
              )}
            </p>
            <p>
              <small>
                Checked {when(v.at)} against the signing key (<code>GET /privacy/public-key</code>).
              </small>
            </p>
          </div>
          {v.chains?.length ? (
            <Table caption="The chains as verified">
              <thead>
                <tr>
                  <th scope="col">Chain</th>
                  <th scope="col">Entries</th>
                  <th scope="col">Checkpoints</th>
                  <th scope="col">Head</th>
                  <th scope="col">Proof starts at</th>
                </tr>
              </thead>
              <tbody>
                {v.chains.map((c) => (
                  <tr key={c.class} data-chain={c.class}>
                    <th scope="row">{c.class}</th>
                    <td>{c.entries}</td>
                    <td>{c.checkpoints}</td>
                    <td>
                      #{c.head_seq} <Hash value={c.head_hash} />
                    </td>
                    <td>{c.from_checkpoint ? `checkpoint of ${c.from_checkpoint}` : 'the first entry'}</td>
                  </tr>
                ))}
              </tbody>
            </Table>
          ) : null}
          <Checkpoints latest={v.latest_checkpoints} />
          <p>
            <button
              type="button"
              class="secondary"
              onClick={() => result.reload()}
              disabled={result.loading}
              aria-busy={result.loading ? 'true' : undefined}
            >
              Verify again
            </button>
          </p>
        </>
      ) : null}
    </section>
  );
}

function Checkpoints({ latest }: { latest: AuditVerification['latest_checkpoints'] }) {
  const signed = Object.entries(latest ?? {}).filter(([, c]) => c);
  if (!signed.length) return <p>No checkpoint is signed yet: the first is written when a chain's first day closes.</p>;
  return (
    <details>
      <summary>Latest signed checkpoints, for verifying offline</summary>
      {signed.map(([name, c]) => (
        <div key={name}>
          <h3>
            {name} <small class="muted">at entry #{c!.seq}</small>
          </h3>
          <p>Document (signed as these exact bytes):</p>
          <pre>
            <code>{c!.document}</code>
          </pre>
          <p>Signature (ECDSA P-256 over SHA-256, base64 DER):</p>
          <pre>
            <code class="hash">{c!.signature}</code>
          </pre>
        </div>
      ))}
    </details>
  );
}

function Entries() {
  const { api } = useApp();
  const [form, setForm] = useState<Query>({ class: 'evidence', action: '', from: '', to: '' });
  const [applied, setApplied] = useState<Query>(form);
  const [entries, setEntries] = useState<AuditEntry[]>([]);
  const [nextBefore, setNextBefore] = useState<number | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [loading, setLoading] = useState(true);
  const [actions, setActions] = useState<string[]>([]);
  const latest = useRef(0);

  const load = async (query: Query, before?: number) => {
    const ticket = ++latest.current;
    setLoading(true);
    setProblem(null);
    try {
      const page = await api.get<AuditPage>('/audit', {
        query: {
          class: query.class,
          limit: PAGE_SIZE,
          before,
          action: query.action.trim(),
          from: query.from ? dayStart(query.from) : undefined,
          to: query.to ? dayStart(query.to, 1) : undefined,
        },
      });
      if (ticket !== latest.current) return;
      setApplied(query);
      setEntries((old) => (before ? [...old, ...page.entries] : page.entries));
      setNextBefore(page.next_before ?? null);
      setActions((old) => [...new Set([...old, ...page.entries.map((e) => e.action)])].sort());
    } catch (err) {
      if (ticket === latest.current) setProblem(asProblem(err));
    } finally {
      if (ticket === latest.current) setLoading(false);
    }
  };

  useEffect(() => {
    void load(form);
  }, []);

  const submit = (e: Submit) => {
    e.preventDefault();
    void load(form);
  };
  const switchClass = (value: AuditClass) => {
    // Actions belong to one chain: the action filter does not carry over.
    const next = { ...form, class: value, action: '' };
    setForm(next);
    setActions([]);
    void load(next);
  };
  const clear = () => {
    const next = { ...form, action: '', from: '', to: '' };
    setForm(next);
    void load(next);
  };
  const filtered = applied.action || applied.from || applied.to;
  const label = CLASSES.find(([c]) => c === applied.class)?.[1] ?? applied.class;

  return (
    <section aria-labelledby="entries-heading">
      <h2 id="entries-heading">Entries</h2>
      <form onSubmit={submit} aria-label="Audit log filters" novalidate>
        <fieldset>
          <legend>Chain</legend>
          {CLASSES.map(([value, name, hint]) => (
            <label key={value}>
              <input
                type="radio"
                name="class"
                value={value}
                checked={form.class === value}
                onChange={() => switchClass(value)}
              />
              {name} <span class="muted">({hint})</span>
            </label>
          ))}
        </fieldset>
        <div class="grid">
          <Field label="Action" field="action" problem={problem} hint="Exact name, e.g. privacy_request.erased.">
            {(a) => (
              <>
                <input
                  {...a}
                  list="audit-actions"
                  autocomplete="off"
                  spellcheck={false}
                  value={form.action}
                  onInput={(e) => setForm({ ...form, action: e.currentTarget.value })}
                />
                <datalist id="audit-actions">
                  {actions.map((x) => (
                    <option key={x} value={x} />
                  ))}
                </datalist>
              </>
            )}
          </Field>
          <Field label="From (UTC)" field="from" problem={problem}>
            {(a) => <input {...a} type="date" value={form.from} onInput={(e) => setForm({ ...form, from: e.currentTarget.value })} />}
          </Field>
          <Field label="To (UTC, inclusive)" field="to" problem={problem}>
            {(a) => <input {...a} type="date" value={form.to} onInput={(e) => setForm({ ...form, to: e.currentTarget.value })} />}
          </Field>
        </div>
        <div class="buttons">
          <button type="submit" disabled={loading} aria-busy={loading ? 'true' : undefined}>
            Show entries
          </button>
          <button type="button" class="secondary outline" onClick={clear} disabled={loading}>
            Clear filters
          </button>
        </div>
      </form>
      <ProblemBanner problem={problem} />
      {entries.length ? (
        <Table class="audit-entries" caption={`${label} entries${filtered ? ' matching the filters' : ''}, newest first`}>
          <thead>
            <tr>
              <th scope="col">#</th>
              <th scope="col">Time</th>
              <th scope="col">Actor</th>
              <th scope="col">Action</th>
              <th scope="col">Target</th>
              <th scope="col">Outcome</th>
              <th scope="col">Details</th>
              <th scope="col">Hash</th>
            </tr>
          </thead>
          <tbody>
            {entries.map((e) => (
              <tr key={e.seq} data-seq={e.seq} data-action={e.action}>
                <td>{e.seq}</td>
                <td class="at">
                  <At value={e.at} />
                </td>
                <td class="actor">
                  <Actor value={e.actor} />
                </td>
                <td>
                  <Breakable value={e.action} at="." />
                </td>
                <td>
                  <Breakable value={e.target} at="#" anywhere />
                </td>
                <td>
                  <Badge tone={OUTCOME_TONE[e.outcome] ?? 'neutral'}>{e.outcome}</Badge>
                </td>
                <td class="details">
                  <Details entry={e} />
                </td>
                <td>
                  <Hash value={e.hash} />
                </td>
              </tr>
            ))}
          </tbody>
        </Table>
      ) : loading ? (
        <Loading what="audit entries" />
      ) : problem ? null : (
        <p>{filtered ? 'No entries match the filters.' : `The ${label.toLowerCase()} chain has no entries yet.`}</p>
      )}
      {nextBefore ? (
        <button type="button" class="secondary" disabled={loading} onClick={() => load(applied, nextBefore)}>
          Older entries
        </button>
      ) : null}
    </section>
  );
}
