import { ApiError } from '../api';
import { useApp } from '../context';
import type { ConnectionSummary, ExportRun, ExportSettings, PrivacyRequestSummary, RetentionTable } from '../types';
import { Badge, Loading, ProblemBanner, Status, Table, Time, useLoad } from '../ui';
import { describeSchedule } from './exports';

export function Overview() {
  const { api, session } = useApp();
  const connections = useLoad(() => api.get<{ connections: ConnectionSummary[] }>('/connections'));
  const settings = useLoad(() =>
    api.get<ExportSettings>('/export/settings').catch((err) => {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }),
  );
  const runs = useLoad(() => api.get<{ runs: ExportRun[] }>('/export/runs', { query: { limit: 1 } }));
  const requests = useLoad(() => api.get<{ requests: PrivacyRequestSummary[] }>('/privacy/requests'));
  const retention = useLoad(() => api.get<RetentionTable>('/retention'));

  return (
    <>
      <h1 tabIndex={-1}>Overview</h1>
      <p>
        Tenant <code>{session.tenant}</code>, signed in as <strong>{session.role}</strong>.
      </p>
      <div class="grid-cards">
        <section aria-labelledby="ov-connections">
          <h2 id="ov-connections">Connections</h2>
          <ProblemBanner problem={connections.problem} />
          {connections.loading && !connections.data ? <Loading what="connections" /> : null}
          {connections.data ? (
            connections.data.connections.length ? (
              <ul>
                {connections.data.connections.map((c) => (
                  <li key={c.provider}>
                    {c.provider}: <Status value={c.status} />
                  </li>
                ))}
              </ul>
            ) : (
              <p>
                No provider is connected. <a href="/connections">Connect one</a>.
              </p>
            )
          ) : null}
        </section>
        <section aria-labelledby="ov-export">
          <h2 id="ov-export">Exports</h2>
          <ProblemBanner problem={settings.problem ?? runs.problem} />
          {settings.data === null ? (
            <p>
              Exports are not configured. <a href="/exports">Set them up</a>.
            </p>
          ) : settings.data ? (
            <p>
              Next scheduled:{' '}
              {settings.data.next_run_at ? (
                <>
                  <Time value={settings.data.next_run_at} /> —{' '}
                </>
              ) : null}
              {describeSchedule(settings.data.schedule.expression)} ({settings.data.schedule.timezone}){' '}
              {settings.data.schedule_active ? <Badge tone="ok">schedule active</Badge> : <Badge tone="warn">schedule inactive</Badge>}
            </p>
          ) : null}
          {runs.data ? (
            runs.data.runs[0] ? (
              <p>
                Last export: <Time value={runs.data.runs[0].started_at} /> <Status value={runs.data.runs[0].status} />,{' '}
                {runs.data.runs[0].conversations} conversations, {runs.data.runs[0].messages} messages.
              </p>
            ) : (
              <p>No export has run yet.</p>
            )
          ) : null}
        </section>
      </div>
      <section aria-labelledby="ov-privacy">
        <h2 id="ov-privacy">Open privacy requests</h2>
        <ProblemBanner problem={requests.problem} />
        {requests.data ? (
          requests.data.requests.length ? (
            <Table caption="Open privacy requests, the most urgent first">
              <thead>
                <tr>
                  <th scope="col">Request</th>
                  <th scope="col">Type</th>
                  <th scope="col">Status</th>
                  <th scope="col">Respond by</th>
                  <th scope="col">Days left</th>
                </tr>
              </thead>
              <tbody>
                {requests.data.requests.map((r) => (
                  <tr key={r.id}>
                    <td>
                      <a href={`/privacy/requests/${r.id}`}>{r.id}</a>
                    </td>
                    <td>
                      {r.kind} ({r.regulation.toUpperCase()})
                    </td>
                    <td>
                      <Status value={r.status} />
                    </td>
                    <td>
                      <Time value={r.respond_by} />
                    </td>
                    <td>{r.overdue ? <Badge tone="bad">overdue</Badge> : r.days_left}</td>
                  </tr>
                ))}
              </tbody>
            </Table>
          ) : (
            <p>No open requests.</p>
          )
        ) : null}
      </section>
      <section aria-labelledby="ov-retention">
        <h2 id="ov-retention">Retention</h2>
        <ProblemBanner problem={retention.problem} />
        {retention.data ? <RetentionView table={retention.data} /> : retention.loading ? <Loading what="the retention table" /> : null}
      </section>
    </>
  );
}

export function RetentionView({ table }: { table: RetentionTable }) {
  return (
    <>
      <Table caption="How long custody keeps each kind of data">
        <thead>
          <tr>
            <th scope="col">Class</th>
            <th scope="col">Kept</th>
            <th scope="col">Where</th>
            <th scope="col">Promise</th>
            <th scope="col">Mechanism</th>
          </tr>
        </thead>
        <tbody>
          {table.classes.map((c) => (
            <tr key={c.name}>
              <th scope="row">
                <code>{c.name}</code>
              </th>
              <td>
                {c.period.at_least ? 'at least ' : ''}
                {c.period.value} {c.period.unit}
                {c.period.expires_automatically ? '' : ' (not deleted automatically)'}
              </td>
              <td>{c.store}</td>
              <td>{c.promise}</td>
              <td>{c.mechanism}</td>
            </tr>
          ))}
        </tbody>
      </Table>
      <p>
        Imports may use {table.imports.classes.map((c, i) => (
          <span key={c}>
            {i ? ', ' : ''}
            <code>{c}</code>
          </span>
        ))}{' '}
        (default <code>{table.imports.default_class}</code>). Old object versions are kept {table.noncurrent_version_days}{' '}
        days; unfinished uploads are aborted after {table.abort_incomplete_multipart_days} days.
      </p>
    </>
  );
}
