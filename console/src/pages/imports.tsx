import type { ComponentType } from 'preact';
import { useEffect, useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { atLeast } from '../auth';
import { useApp } from '../context';
import type { ImporterProps } from '../importer/importer';
import { leftOut, type Import, type ImportsDeleted, type PrivacySettings } from '../types';
import { EmbedImporter } from './embed';
import { Confirm, Loading, Notice, ProblemBanner, Status, Table, Time, bytes, day, useLoad } from '../ui';

interface Download {
  name: string;
  bytes: number;
  url: string;
  expires_at: string;
}

function hasData(i: Import): boolean {
  return i.mode === 'store' && !i.data_deleted_at && !['created', 'invalid', 'expired', 'deleted'].includes(i.status);
}

/** The importer is its own chunk: loaded when an operator opens this page. */
function LazyImporter(props: ImporterProps) {
  const [Component, setComponent] = useState<ComponentType<ImporterProps> | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  useEffect(() => {
    import('../importer/importer').then(
      (m) => setComponent(() => m.Importer),
      (err) => setProblem(asProblem(err)),
    );
  }, []);
  if (problem) return <ProblemBanner problem={problem} />;
  return Component ? <Component {...props} /> : <Loading what="the importer" />;
}

export function Imports() {
  const { api, session } = useApp();
  const operator = atLeast(session.role, 'operator');
  const admin = atLeast(session.role, 'admin');
  const [imports, setImports] = useState<Import[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [loading, setLoading] = useState(true);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [confirmAll, setConfirmAll] = useState(false);
  // The declared purposes, for the importer's select: only admins may read the
  // privacy settings, so an operator types the purpose (the API checks it).
  const [purposes, setPurposes] = useState<string[] | undefined>(undefined);
  const [purposesRead, setPurposesRead] = useState(!admin);
  useEffect(() => {
    if (!admin) return;
    api.get<PrivacySettings>('/privacy/settings').then(
      (s) => {
        setPurposes(s.purposes ?? []);
        setPurposesRead(true);
      },
      () => setPurposesRead(true),
    );
  }, []);

  const load = async (more = false) => {
    setLoading(true);
    try {
      const page = await api.get<{ imports: Import[]; next_cursor: string | null }>('/imports', {
        query: { limit: 25, cursor: more ? cursor : undefined },
      });
      setImports((old) => (more ? [...old, ...page.imports] : page.imports));
      setCursor(page.next_cursor);
      setProblem(null);
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setLoading(false);
    }
  };
  useEffect(() => {
    void load();
  }, []);

  const deleteAll = async () => {
    try {
      const done = await api.delete<ImportsDeleted>('/imports');
      setNotice(`Deleted the data of ${done.imports} imports (${done.deleted.object_versions} object versions).`);
      await load();
    } catch (err) {
      setProblem(asProblem(err));
    }
  };

  return (
    <>
      <h1 tabIndex={-1}>Imports</h1>
      <p>
        Imported files are kept encrypted until their retention class expires them (30 or 90 days), and can be viewed,
        downloaded and deleted at any time. Bypass imports keep nothing.
      </p>
      {operator ? (
        <section aria-labelledby="importer-heading">
          <h2 id="importer-heading">New import</h2>
          {purposesRead ? <LazyImporter api={api} purposes={purposes} onDone={() => void load()} /> : <Loading what="the importer" />}
        </section>
      ) : null}
      {operator ? <EmbedImporter /> : null}
      <section aria-labelledby="list-heading">
        <h2 id="list-heading">Import log</h2>
        {notice ? <Notice>{notice}</Notice> : null}
        <ProblemBanner problem={problem} />
        {loading && !imports.length ? <Loading what="imports" /> : null}
        {imports.length ? (
          <ImportTable imports={imports} onChanged={() => load()} />
        ) : !loading ? (
          <p>No imports.</p>
        ) : null}
        {cursor ? (
          <button type="button" class="secondary" onClick={() => load(true)}>
            More imports
          </button>
        ) : null}
        {admin && imports.length ? (
          <p>
            <button type="button" class="danger" onClick={() => setConfirmAll(true)}>
              Delete all imports
            </button>
          </p>
        ) : null}
      </section>
      {confirmAll ? (
        <Confirm
          title="Delete the data of every import?"
          confirmLabel="Delete all imports"
          onConfirm={deleteAll}
          onClose={() => setConfirmAll(false)}
        >
          <p>Every stored file and row of this account is deleted now, every version. The log entries stay, marked deleted.</p>
        </Confirm>
      ) : null}
    </>
  );
}

function ImportTable({ imports, onChanged }: { imports: Import[]; onChanged: () => void }) {
  return (
    <Table caption="Imports, newest first">
      <thead>
        <tr>
          <th scope="col">Import</th>
          <th scope="col">Created</th>
          <th scope="col">Kind</th>
          <th scope="col">Status</th>
          <th scope="col">Rows (valid / invalid / delivered)</th>
          <th scope="col">Expires</th>
          <th scope="col">Actions</th>
        </tr>
      </thead>
      <tbody>
        {imports.map((i) => (
          <tr key={i.id} data-import={i.id}>
            <td>
              <a href={`/imports/${i.id}`}>
                <code>{i.id.slice(-8)}</code>
                <span class="visually-hidden"> (view import {i.id})</span>
              </a>
            </td>
            <td>
              <Time value={i.created_at} />
            </td>
            <td>
              {i.format} · {i.mode}
            </td>
            <td>
              <Status value={i.status} />
            </td>
            <td>
              {i.rows_valid} / {i.rows_invalid} / {i.rows_delivered}
              {leftOut(i) ? (
                <>
                  <br />
                  <small data-left-out>left out: {leftOut(i)}</small>
                </>
              ) : null}
            </td>
            <td>{i.mode === 'bypass' ? 'nothing kept' : day(i.data_expires_at)}</td>
            <td>
              <ImportActions imp={i} onChanged={onChanged} compact />
            </td>
          </tr>
        ))}
      </tbody>
    </Table>
  );
}

function ImportActions({ imp, onChanged, compact }: { imp: Import; onChanged: () => void; compact?: boolean }) {
  const { api, session } = useApp();
  const operator = atLeast(session.role, 'operator');
  const admin = atLeast(session.role, 'admin');
  const [links, setLinks] = useState<Download[] | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [deleted, setDeleted] = useState<string | null>(null);
  const short = imp.id.slice(-8);

  const download = async () => {
    setProblem(null);
    try {
      const got = await api.get<{ objects: Download[] }>(`/imports/${imp.id}/download`);
      setLinks(got.objects);
    } catch (err) {
      setProblem(asProblem(err));
    }
  };
  const remove = async () => {
    try {
      const done = await api.delete<ImportsDeleted>(`/imports/${imp.id}`);
      setDeleted(`Deleted (${done.deleted.object_versions} object versions).`);
      onChanged();
    } catch (err) {
      setProblem(asProblem(err));
    }
  };
  const data = hasData(imp);
  if (!operator || (!data && !admin)) return compact ? <span>—</span> : null;
  return (
    <div class="actions">
      {operator && data ? (
        <button type="button" class="secondary" onClick={download} aria-label={`Download import ${short}`}>
          Download
        </button>
      ) : null}{' '}
      {admin && imp.status !== 'deleted' ? (
        <button type="button" class="danger" onClick={() => setConfirming(true)} aria-label={`Delete import ${short}`}>
          Delete
        </button>
      ) : null}
      {links ? (
        <ul class="links">
          {links.map((l) => (
            <li key={l.url}>
              <a href={l.url} target="_blank" rel="noopener noreferrer" download={l.name.split('/').pop()}>
                {l.name}
              </a>{' '}
              ({bytes(l.bytes)}, link valid until <Time value={l.expires_at} />)
            </li>
          ))}
        </ul>
      ) : null}
      {deleted ? <Notice>{deleted}</Notice> : null}
      <ProblemBanner problem={problem} />
      {confirming ? (
        <Confirm
          title={`Delete import ${short}?`}
          confirmLabel="Delete import"
          onConfirm={remove}
          onClose={() => setConfirming(false)}
        >
          <p>The file and its rows are deleted now, every stored version. The log entry stays, marked deleted.</p>
        </Confirm>
      ) : null}
    </div>
  );
}

export function ImportDetail({ id }: { id: string }) {
  const { api } = useApp();
  const imp = useLoad(() => api.get<Import>(`/imports/${id}`), [id]);
  const i = imp.data;
  return (
    <>
      <h1 tabIndex={-1}>Import {id.slice(-8)}</h1>
      <p>
        <a href="/imports">Back to imports</a>
      </p>
      <ProblemBanner problem={imp.problem} />
      {imp.loading && !i ? <Loading what="the import" /> : null}
      {i ? (
        <>
          <dl>
            <dt>Id</dt>
            <dd>
              <code>{i.id}</code>
            </dd>
            <dt>Status</dt>
            <dd>
              <Status value={i.status} />
              {i.error ? ` — ${i.error}` : ''}
            </dd>
            <dt>Format and mode</dt>
            <dd>
              {i.format}, {i.mode}, retention <code>{i.retention_class}</code>
            </dd>
            <dt>Destination</dt>
            <dd>{i.destination_host ?? '—'}</dd>
            <dt>Created / completed</dt>
            <dd>
              <Time value={i.created_at} /> / <Time value={i.completed_at} />
            </dd>
            <dt>Size and hash</dt>
            <dd>
              {bytes(i.bytes)} {i.sha256 ? <code class="hash">{i.sha256}</code> : null}
            </dd>
            <dt>Rows</dt>
            <dd>
              {i.rows_total} total, {i.rows_valid} valid, {i.rows_invalid} invalid, {i.rows_delivered} delivered in{' '}
              {i.batches_delivered} batches
            </dd>
            {leftOut(i) ? (
              <>
                <dt>Left out (not pushed)</dt>
                <dd data-left-out>{leftOut(i)}</dd>
              </>
            ) : null}
            {i.purpose ? (
              <>
                <dt>Purpose</dt>
                <dd>
                  <code>{i.purpose}</code>
                </dd>
              </>
            ) : null}
            <dt>Required columns</dt>
            <dd>{i.required_columns.length ? i.required_columns.join(', ') : '—'}</dd>
            <dt>Data expires</dt>
            <dd>{i.mode === 'bypass' ? 'nothing kept' : <Time value={i.data_expires_at} />}</dd>
            <dt>Data deleted</dt>
            <dd>
              <Time value={i.data_deleted_at} />
            </dd>
          </dl>
          {i.errors.length ? (
            <Table caption="Row errors found by custody">
              <thead>
                <tr>
                  <th scope="col">Line</th>
                  <th scope="col">Problem</th>
                </tr>
              </thead>
              <tbody>
                {i.errors.map((e, n) => (
                  <tr key={n}>
                    <td>
                      {e.batch ? `batch ${e.batch}, ` : ''}
                      {e.line}
                    </td>
                    <td>{e.message}</td>
                  </tr>
                ))}
              </tbody>
            </Table>
          ) : null}
          <ImportActions imp={i} onChanged={() => imp.reload()} />
        </>
      ) : null}
    </>
  );
}
