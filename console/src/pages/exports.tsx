import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, asProblem } from '../api';
import { atLeast } from '../auth';
import { useApp } from '../context';
import { CHANNELS, type Channel, type DateRange, type DestinationTestResult, type ExportRun, type ExportSettings } from '../types';
import { Badge, Field, Loading, Notice, ProblemBanner, Status, Table, Time, bytes, useLoad, type Submit } from '../ui';

export const PRESETS: { expression: string; label: string }[] = [
  { expression: 'cron(0 3 * * ? *)', label: 'Every day at 03:00' },
  { expression: 'cron(0 3 ? * MON *)', label: 'Every Monday at 03:00' },
  { expression: 'cron(0 3 1 * ? *)', label: 'On the 1st of every month at 03:00' },
  { expression: 'rate(6 hours)', label: 'Every 6 hours' },
  { expression: 'rate(1 hour)', label: 'Every hour' },
];

export function describeSchedule(expression: string): string {
  return PRESETS.find((p) => p.expression === expression)?.label ?? expression;
}

function timeZones(): string[] {
  try {
    return (Intl as unknown as { supportedValuesOf(k: string): string[] }).supportedValuesOf('timeZone');
  } catch {
    return ['UTC', 'Europe/Berlin', 'Europe/London', 'America/New_York'];
  }
}

function isoDay(value: string): string {
  return value ? value.slice(0, 10) : '';
}

export function Exports() {
  const { api, session } = useApp();
  const admin = atLeast(session.role, 'admin');
  const operator = atLeast(session.role, 'operator');
  const settings = useLoad(() =>
    api.get<ExportSettings>('/export/settings').catch((err) => {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }),
  );
  const [runs, setRuns] = useState<ExportRun[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [runsProblem, setRunsProblem] = useState<ApiError | null>(null);
  const [runNotice, setRunNotice] = useState<string | null>(null);
  const [runProblem, setRunProblem] = useState<ApiError | null>(null);
  const [running, setRunning] = useState(false);
  const polling = useRef<number | undefined>();

  const loadRuns = async (more = false) => {
    try {
      const page = await api.get<{ runs: ExportRun[]; next_cursor: string | null }>('/export/runs', {
        query: { limit: 20, cursor: more ? cursor : undefined },
      });
      setRuns((old) => (more ? [...old, ...page.runs] : page.runs));
      setCursor(page.next_cursor);
      setRunsProblem(null);
      return page.runs;
    } catch (err) {
      setRunsProblem(asProblem(err));
      return [];
    }
  };

  useEffect(() => {
    void loadRuns();
    return () => clearTimeout(polling.current);
  }, []);

  const runNow = async () => {
    setRunning(true);
    setRunProblem(null);
    setRunNotice(null);
    try {
      const queued = await api.post<{ status: string; resumes_run: string | null }>('/export/runs');
      setRunNotice(queued.resumes_run ? `Queued: resuming run ${queued.resumes_run}.` : 'Queued: the export starts within seconds.');
      const before = runs[0]?.run_id;
      // Follow the run in the log until it finishes (at most two minutes).
      const started = Date.now();
      const tick = async () => {
        const latest = (await loadRuns())[0];
        const settled = latest && latest.run_id !== before && !['running', 'continued'].includes(latest.status);
        if (settled) {
          setRunNotice(`Export ${latest.status}: ${latest.conversations} conversations, ${latest.messages} messages.`);
          setRunning(false);
        } else if (Date.now() - started < 120_000) {
          polling.current = window.setTimeout(tick, 2000);
        } else {
          setRunning(false);
        }
      };
      polling.current = window.setTimeout(tick, 1000);
    } catch (err) {
      setRunProblem(asProblem(err));
      setRunning(false);
    }
  };

  return (
    <>
      <h1 tabIndex={-1}>Exports</h1>
      <p>
        Conversations are exported as JSON to your own WebDAV or S3 storage, one file per conversation plus a hashed
        manifest. custody keeps no copy; the export log is kept 90 days.
      </p>
      <section aria-labelledby="settings-heading">
        <h2 id="settings-heading">Settings</h2>
        <ProblemBanner problem={settings.problem} />
        {settings.loading && settings.data === undefined ? <Loading what="export settings" /> : null}
        {settings.data !== undefined ? (
          admin ? (
            <SettingsForm current={settings.data} onSaved={(s) => settings.set(s)} />
          ) : (
            <SettingsView current={settings.data} />
          )
        ) : null}
      </section>
      <section aria-labelledby="log-heading">
        <h2 id="log-heading">Export log</h2>
        {operator ? (
          <p>
            <button type="button" onClick={runNow} disabled={running} aria-busy={running ? 'true' : undefined}>
              Run now
            </button>
          </p>
        ) : null}
        {runNotice ? <Notice>{runNotice}</Notice> : null}
        <ProblemBanner problem={runProblem ?? runsProblem} />
        {runs.length ? (
          <Table caption="Export runs, newest first (kept 90 days)">
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Trigger</th>
                <th scope="col">Status</th>
                <th scope="col">Window</th>
                <th scope="col">Conversations</th>
                <th scope="col">Messages</th>
                <th scope="col">Bytes</th>
                <th scope="col">Errors</th>
              </tr>
            </thead>
            <tbody>
              {runs.map((r) => (
                <tr key={r.run_id} data-run={r.run_id}>
                  <td>
                    <Time value={r.started_at} />
                  </td>
                  <td>{r.trigger === 'kick' ? 'run now' : 'schedule'}</td>
                  <td>
                    <Status value={r.status} />
                  </td>
                  <td>
                    <Time value={r.window.start} /> – <Time value={r.window.end} />
                  </td>
                  <td>{r.conversations}</td>
                  <td>{r.messages}</td>
                  <td>{bytes(r.bytes)}</td>
                  <td>
                    {r.errors.length ? (
                      <details>
                        <summary>{r.errors.length}</summary>
                        <ul>
                          {r.errors.map((e, i) => (
                            <li key={i}>
                              <Time value={e.at} /> {e.kind}: {e.detail}
                            </li>
                          ))}
                        </ul>
                      </details>
                    ) : (
                      0
                    )}
                  </td>
                </tr>
              ))}
            </tbody>
          </Table>
        ) : (
          <p>No export has run in the last 90 days.</p>
        )}
        {cursor ? (
          <button type="button" class="secondary" onClick={() => loadRuns(true)}>
            Older runs
          </button>
        ) : null}
      </section>
    </>
  );
}

function SettingsView({ current }: { current: ExportSettings | null }) {
  if (!current) return <p>Exports are not configured. An admin can set them up here.</p>;
  const d = current.destination;
  return (
    <dl>
      <dt>Schedule</dt>
      <dd>
        {describeSchedule(current.schedule.expression)} <code>{current.schedule.expression}</code> in{' '}
        {current.schedule.timezone}{' '}
        {current.schedule_active ? <Badge tone="ok">active</Badge> : <Badge tone="warn">inactive</Badge>}
      </dd>
      <dt>Channels</dt>
      <dd>{current.channels.join(', ')}</dd>
      <dt>Date range</dt>
      <dd>{describeRange(current.date_range)}</dd>
      <dt>Destination</dt>
      <dd>
        {d.type === 'webdav' ? (
          <>
            WebDAV <code>{d.url}</code> as {d.username} (password stored)
          </>
        ) : (
          <>
            S3 bucket <code>{d.bucket}</code>
            {d.prefix ? <> under <code>{d.prefix}</code></> : null}
          </>
        )}
      </dd>
      <dt>Updated</dt>
      <dd>
        <Time value={current.updated_at} />
      </dd>
    </dl>
  );
}

function describeRange(range: DateRange): string {
  switch (range.mode) {
    case 'since_last_run':
      return `Since the last run (first run: ${range.initial_days ?? 30} days back)`;
    case 'rolling':
      return `The last ${range.days} days`;
    case 'fixed':
      return `From ${isoDay(range.start)} to ${isoDay(range.end)} (UTC)`;
  }
}

function SettingsForm({ current, onSaved }: { current: ExportSettings | null; onSaved: (s: ExportSettings) => void }) {
  const { api } = useApp();
  const initialExpression = current?.schedule.expression ?? PRESETS[0].expression;
  const [preset, setPreset] = useState(PRESETS.some((p) => p.expression === initialExpression) ? initialExpression : 'custom');
  const [cron, setCron] = useState(initialExpression);
  const [timezone, setTimezone] = useState(current?.schedule.timezone ?? Intl.DateTimeFormat().resolvedOptions().timeZone ?? 'UTC');
  const [channels, setChannels] = useState<Channel[]>(current?.channels ?? [...CHANNELS]);
  const range = current?.date_range;
  const [mode, setMode] = useState<DateRange['mode']>(range?.mode ?? 'since_last_run');
  const [initialDays, setInitialDays] = useState(range?.mode === 'since_last_run' ? String(range.initial_days ?? 30) : '30');
  const [days, setDays] = useState(range?.mode === 'rolling' ? String(range.days) : '30');
  const [start, setStart] = useState(range?.mode === 'fixed' ? isoDay(range.start) : '');
  const [end, setEnd] = useState(range?.mode === 'fixed' ? isoDay(range.end) : '');
  const dest = current?.destination;
  const [type, setType] = useState<'webdav' | 's3'>(dest?.type ?? 'webdav');
  const [url, setUrl] = useState(dest?.type === 'webdav' ? dest.url : '');
  const [username, setUsername] = useState(dest?.type === 'webdav' ? dest.username : '');
  const [password, setPassword] = useState('');
  const [bucket, setBucket] = useState(dest?.type === 's3' ? dest.bucket : '');
  const [prefix, setPrefix] = useState(dest?.type === 's3' ? dest.prefix : '');
  const [roleArn, setRoleArn] = useState(dest?.type === 's3' ? dest.role_arn ?? '' : '');
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [testing, setTesting] = useState(false);
  const [tested, setTested] = useState<DestinationTestResult | null>(null);
  const passwordStored = dest?.type === 'webdav' && dest.password_set;

  const destinationOf = () =>
    type === 'webdav'
      ? { type, url: url.trim(), username: username.trim(), ...(password ? { password } : {}) }
      : { type, bucket: bucket.trim(), prefix: prefix.trim() || null, role_arn: roleArn.trim() };

  const test = async () => {
    setTesting(true);
    setProblem(null);
    setSaved(null);
    setTested(null);
    try {
      setTested(await api.post<DestinationTestResult>('/export/destination/test', { destination: destinationOf() }));
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setTesting(false);
    }
  };

  const submit = async (e: Submit) => {
    e.preventDefault();
    setBusy(true);
    setProblem(null);
    setSaved(null);
    setTested(null);
    const date_range: DateRange =
      mode === 'since_last_run'
        ? { mode, initial_days: Number(initialDays) || null }
        : mode === 'rolling'
          ? { mode, days: Number(days) }
          : { mode, start: start ? `${start}T00:00:00Z` : '', end: end ? `${end}T00:00:00Z` : '' };
    const destination = destinationOf();
    try {
      const stored = await api.put<ExportSettings>('/export/settings', {
        schedule: { expression: preset === 'custom' ? cron.trim() : preset, timezone: timezone.trim() },
        channels,
        date_range,
        destination,
      });
      setPassword('');
      setSaved(`Settings saved at ${new Date(stored.updated_at).toLocaleTimeString()}; the schedule is ${stored.schedule_active ? 'active' : 'inactive'}.`);
      onSaved(stored);
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <form onSubmit={submit} aria-labelledby="settings-heading" novalidate>
      <ProblemBanner problem={problem} />
      <fieldset>
        <legend>Schedule</legend>
        <Field label="When" field="schedule.preset">
          {(a) => (
            <select {...a} value={preset} onChange={(e) => setPreset(e.currentTarget.value)}>
              {PRESETS.map((p) => (
                <option key={p.expression} value={p.expression}>
                  {p.label}
                </option>
              ))}
              <option value="custom">Custom (cron or rate expression)</option>
            </select>
          )}
        </Field>
        {preset === 'custom' ? (
          <Field
            label="Expression"
            field="schedule.expression"
            problem={problem}
            hint="EventBridge Scheduler syntax, at most one run an hour: cron(0 3 * * ? *) or rate(1 day)."
          >
            {(a) => <input {...a} required value={cron} onInput={(e) => setCron(e.currentTarget.value)} />}
          </Field>
        ) : (
          <Field label="Expression" field="schedule.expression" problem={problem}>
            {(a) => <input {...a} readOnly value={preset} />}
          </Field>
        )}
        <Field label="Time zone" field="schedule.timezone" problem={problem} hint="An IANA name such as Europe/Berlin or UTC.">
          {(a) => (
            <>
              <input {...a} list="time-zones" required value={timezone} onInput={(e) => setTimezone(e.currentTarget.value)} />
              <datalist id="time-zones">
                {timeZones().map((z) => (
                  <option key={z} value={z} />
                ))}
              </datalist>
            </>
          )}
        </Field>
      </fieldset>
      <fieldset aria-describedby="channels-error">
        <legend>Channels</legend>
        {CHANNELS.map((c) => (
          <label key={c}>
            <input
              type="checkbox"
              name="channels"
              value={c}
              checked={channels.includes(c)}
              onChange={(e) =>
                setChannels((old) => (e.currentTarget.checked ? [...old, c] : old.filter((x) => x !== c)))
              }
            />
            {c}
          </label>
        ))}
        {problem?.field?.startsWith('channels') ? (
          <small id="channels-error" class="field-error">
            {problem.detail}
          </small>
        ) : null}
      </fieldset>
      <fieldset>
        <legend>Date range</legend>
        {(
          [
            ['since_last_run', 'Since the last run'],
            ['rolling', 'A rolling window'],
            ['fixed', 'Fixed dates'],
          ] as const
        ).map(([value, label]) => (
          <label key={value}>
            <input type="radio" name="date_range.mode" value={value} checked={mode === value} onChange={() => setMode(value)} />
            {label}
          </label>
        ))}
        {mode === 'since_last_run' ? (
          <Field label="First run looks back (days)" field="date_range.initial_days" problem={problem}>
            {(a) => <input {...a} type="number" min={1} max={3650} value={initialDays} onInput={(e) => setInitialDays(e.currentTarget.value)} />}
          </Field>
        ) : null}
        {mode === 'rolling' ? (
          <Field label="Days" field="date_range.days" problem={problem}>
            {(a) => <input {...a} type="number" min={1} max={3650} required value={days} onInput={(e) => setDays(e.currentTarget.value)} />}
          </Field>
        ) : null}
        {mode === 'fixed' ? (
          <div class="grid">
            <Field label="Start (UTC)" field="date_range.start" problem={problem}>
              {(a) => <input {...a} type="date" required value={start} onInput={(e) => setStart(e.currentTarget.value)} />}
            </Field>
            <Field label="End (UTC, exclusive)" field="date_range.end" problem={problem}>
              {(a) => <input {...a} type="date" required value={end} onInput={(e) => setEnd(e.currentTarget.value)} />}
            </Field>
          </div>
        ) : null}
      </fieldset>
      <fieldset>
        <legend>Destination</legend>
        <label>
          <input type="radio" name="destination.type" value="webdav" checked={type === 'webdav'} onChange={() => setType('webdav')} />
          WebDAV
        </label>
        <label>
          <input type="radio" name="destination.type" value="s3" checked={type === 's3'} onChange={() => setType('s3')} />
          Amazon S3
        </label>
        {type === 'webdav' ? (
          <>
            <Field label="WebDAV URL" field="destination.url" problem={problem} hint="An https collection URL; a trailing / is added.">
              {(a) => <input {...a} type="url" required value={url} onInput={(e) => setUrl(e.currentTarget.value)} />}
            </Field>
            <Field label="Username" field="destination.username" problem={problem}>
              {(a) => <input {...a} required autocomplete="off" value={username} onInput={(e) => setUsername(e.currentTarget.value)} />}
            </Field>
            <Field
              label="Password"
              field="destination.password"
              problem={problem}
              hint={
                passwordStored
                  ? 'A password is stored and is never shown. Leave this empty to keep it (only if URL and username are unchanged).'
                  : 'Stored encrypted and never shown again.'
              }
            >
              {(a) => (
                <input
                  {...a}
                  type="password"
                  autocomplete="new-password"
                  placeholder={passwordStored ? 'stored (write-only)' : ''}
                  value={password}
                  onInput={(e) => setPassword(e.currentTarget.value)}
                />
              )}
            </Field>
          </>
        ) : (
          <>
            <Field label="Bucket" field="destination.bucket" problem={problem}>
              {(a) => <input {...a} required value={bucket} onInput={(e) => setBucket(e.currentTarget.value)} />}
            </Field>
            <Field label="Prefix (optional)" field="destination.prefix" problem={problem}>
              {(a) => <input {...a} value={prefix} onInput={(e) => setPrefix(e.currentTarget.value)} />}
            </Field>
            <Field
              label="Role ARN"
              field="destination.role_arn"
              problem={problem}
              hint="custody assumes this role with your tenant id as ExternalId; it has no access of its own."
            >
              {(a) => <input {...a} required value={roleArn} onInput={(e) => setRoleArn(e.currentTarget.value)} />}
            </Field>
          </>
        )}
      </fieldset>
      {saved ? <Notice>{saved}</Notice> : null}
      {tested ? <TestResult result={tested} /> : null}
      <div class="buttons">
        <button type="submit" disabled={busy || testing} aria-busy={busy ? 'true' : undefined}>
          Save export settings
        </button>
        <button
          type="button"
          class="secondary"
          onClick={test}
          disabled={busy || testing}
          aria-busy={testing ? 'true' : undefined}
          aria-describedby="test-destination-hint"
        >
          Test destination
        </button>
        <small id="test-destination-hint" class="muted">
          Writes a small probe file the way an export does and removes it again (takes up to 30 seconds).
        </small>
      </div>
    </form>
  );
}

function TestResult({ result }: { result: DestinationTestResult }) {
  const where = result.destination === 's3' ? 'S3' : 'WebDAV';
  if (!result.ok) {
    return (
      <Notice tone="bad">
        <strong>Destination test failed</strong> ({where}): {result.error ?? 'the destination gave no reason'}.
      </Notice>
    );
  }
  return result.probe_removed === false ? (
    <Notice tone="warn">
      <strong>Destination test passed</strong> ({where}): the probe <code>{result.probe}</code> was written as an export
      writes, but could not be removed again: delete that hidden file yourself.
    </Notice>
  ) : (
    <Notice>
      <strong>Destination test passed</strong> ({where}): the probe <code>{result.probe}</code> was written as an export
      writes and removed again; nothing is left behind.
    </Notice>
  );
}
