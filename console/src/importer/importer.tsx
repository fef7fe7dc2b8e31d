// The importer: parse in the browser, map columns, validate, then upload.
// Used by the console's Imports page and by the <custody-importer> element. In session
// mode (an import-session token, `cis_…`) it calls the /embed/imports routes, where the
// session fixes the destination, so it neither shows nor sends one.
import { useRef, useState } from 'preact/hooks';
import { asProblem, type Api, type ApiError } from '../api';
import { leftOut, type Import, type PresignedUpload } from '../types';
import { Field, Notice, ProblemBanner, Status, bytes } from '../ui';
import {
  formatOf,
  identifiersOf,
  initialMapping,
  mappingErrors,
  serialize,
  validate,
  type ColumnMap,
  type Parsed,
  type Validated,
} from './parse';
import { parseInBackground } from './parse-client';

export interface ImporterProps {
  api: Api;
  destinationUrl?: string;
  /** The api's bearer is an import-session token: /embed/imports, no destination. */
  session?: boolean;
  /**
   * The tenant's declared purposes (privacy settings), for a select; `[]` when none
   * are declared (no purpose to pick); undefined when unknown (only admins may read
   * the settings), for a text field the API checks.
   */
  purposes?: string[];
  /** A purpose fixed by the embedding page (`purpose` attribute of the element). */
  purpose?: string;
  onDone?: (imported: Import) => void;
}

const MAX_BATCH_ROWS = 500;
const MAX_BATCH_BYTES = 900_000;
const SHOWN_ERRORS = 50;

export function Importer({ api, destinationUrl = '', session = false, purposes, purpose: fixedPurpose, onDone }: ImporterProps) {
  const base = session ? '/embed/imports' : '/imports';
  const [file, setFile] = useState<File | null>(null);
  const [parsed, setParsed] = useState<Parsed | null>(null);
  const [parseProgress, setParseProgress] = useState<number | null>(null);
  const [mapping, setMapping] = useState<ColumnMap[]>([]);
  const [checked, setChecked] = useState<Validated | null>(null);
  const [mode, setMode] = useState<'store' | 'bypass'>('store');
  const [retention, setRetention] = useState<'import-30d' | 'import-90d'>('import-30d');
  const [destination, setDestination] = useState(destinationUrl);
  const [secret, setSecret] = useState('');
  const [country, setCountry] = useState('');
  const [purpose, setPurpose] = useState(fixedPurpose ?? '');
  const [upload, setUpload] = useState<{ done: number; total: number; label: string } | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [result, setResult] = useState<{ imported: Import; secret?: string } | null>(null);
  const errorsRef = useRef<HTMLElement>(null);

  const choose = async (chosen: File | null) => {
    setFile(chosen);
    setParsed(null);
    setChecked(null);
    setResult(null);
    setProblem(null);
    if (!chosen) return;
    setParseProgress(0);
    try {
      const p = await parseInBackground(chosen, formatOf(chosen.name), setParseProgress);
      setParsed(p);
      setMapping(initialMapping(p.columns));
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setParseProgress(null);
    }
  };

  const update = (index: number, change: Partial<ColumnMap>) => {
    setMapping((old) => old.map((m, i) => (i === index ? { ...m, ...change } : m)));
    setChecked(null);
  };

  const mapErrors = mappingErrors(mapping);

  const check = () => {
    if (!parsed) return;
    const v = validate(parsed, mapping, country);
    setChecked(v);
    setTimeout(() => errorsRef.current?.focus(), 0);
  };

  const start = async () => {
    if (!parsed || !checked || !checked.valid.length) return;
    setProblem(null);
    setResult(null);
    const required = mapping.filter((m) => m.include && m.required).map((m) => m.target.trim());
    const identifiers = identifiersOf(mapping);
    // A session's destination is fixed by the session (sending one is refused).
    const dest = session ? {} : { destination: { url: destination.trim(), ...(secret ? { secret } : {}) } };
    // Rows of subjects who withdrew consent for the purpose are left out by custody.
    const bound = purpose.trim() ? { purpose: purpose.trim() } : {};
    try {
      if (mode === 'store') {
        const body = serialize(parsed.format, mapping, checked.valid);
        setUpload({ done: 0, total: body.size, label: 'Uploading' });
        const created = await api.post<{ import: Import; upload: PresignedUpload; destination_secret?: string }>(base, {
          format: parsed.format,
          mode: 'store',
          retention_class: retention,
          ...dest,
          ...bound,
          size: body.size,
          required_columns: required,
          identifiers,
          default_country_code: country.trim() || null,
        });
        await put(created.upload, body, (done) => setUpload({ done, total: body.size, label: 'Uploading' }));
        setUpload({ done: body.size, total: body.size, label: 'Processing' });
        const settled = await settle(api, `${base}/${created.import.id}`);
        setResult({ imported: settled, secret: created.destination_secret });
        onDone?.(settled);
      } else {
        const created = await api.post<{ import: Import; destination_secret?: string }>(base, {
          format: 'rows',
          mode: 'bypass',
          ...dest,
          ...bound,
          required_columns: required,
          identifiers,
          default_country_code: country.trim() || null,
        });
        const id = created.import.id;
        const total = checked.valid.length;
        let sent = 0;
        let batch = 0;
        setUpload({ done: 0, total, label: 'Sending rows' });
        while (sent < total) {
          const rows: Record<string, unknown>[] = [];
          let size = 2;
          while (sent + rows.length < total && rows.length < MAX_BATCH_ROWS) {
            const row = checked.valid[sent + rows.length];
            const rowSize = new TextEncoder().encode(JSON.stringify(row)).length + 1;
            if (rows.length && size + rowSize > MAX_BATCH_BYTES) break;
            rows.push(row);
            size += rowSize;
          }
          batch += 1;
          await api.post(`${base}/${id}/rows`, rows, { headers: { 'idempotency-key': `${id}-${batch}` } });
          sent += rows.length;
          setUpload({ done: sent, total, label: 'Sending rows' });
        }
        let finished: Import;
        try {
          finished = await api.post<Import>(`${base}/${id}/complete`);
        } catch {
          finished = await api.get<Import>(`${base}/${id}`);
        }
        setResult({ imported: finished, secret: created.destination_secret });
        onDone?.(finished);
      }
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setUpload(null);
    }
  };

  return (
    <div class="importer">
      <ProblemBanner problem={problem} />
      <Field label="File (CSV or JSON Lines)" field="file" hint="Parsed in your browser; nothing is sent until you upload.">
        {(a) => (
          <input
            {...a}
            type="file"
            accept=".csv,.jsonl,.ndjson,text/csv,application/x-ndjson"
            onChange={(e) => choose(e.currentTarget.files?.[0] ?? null)}
          />
        )}
      </Field>
      {parseProgress !== null ? (
        <p>
          <label>
            Reading {file?.name}
            <progress value={Math.round(parseProgress * 100)} max={100} />
          </label>
        </p>
      ) : null}
      {parsed ? (
        <>
          <p role="status">
            {file?.name}: {parsed.rows.length} rows, {parsed.columns.length} columns ({parsed.format.toUpperCase()}).
          </p>
          <fieldset>
            <legend>Map columns to fields</legend>
            <div class="table-wrap">
              <table>
                <caption>Each column of the file, the field it becomes, and whether it identifies a person</caption>
                <thead>
                  <tr>
                    <th scope="col">Column</th>
                    <th scope="col">Import</th>
                    <th scope="col">Field</th>
                    <th scope="col">Identifier</th>
                    <th scope="col">Required</th>
                  </tr>
                </thead>
                <tbody>
                  {mapping.map((m, i) => {
                    const error = mapErrors.get(m.source);
                    return (
                      <tr key={m.source} data-column={m.source}>
                        <th scope="row">
                          <code>{m.source}</code>
                        </th>
                        <td>
                          <input
                            type="checkbox"
                            aria-label={`Import column ${m.source}`}
                            checked={m.include}
                            onChange={(e) => update(i, { include: e.currentTarget.checked })}
                          />
                        </td>
                        <td>
                          <input
                            aria-label={`Field for column ${m.source}`}
                            value={m.target}
                            disabled={!m.include}
                            aria-invalid={error ? 'true' : undefined}
                            aria-describedby={error ? `map-error-${i}` : undefined}
                            onInput={(e) => update(i, { target: e.currentTarget.value })}
                          />
                          {error ? (
                            <small id={`map-error-${i}`} class="field-error">
                              {error}
                            </small>
                          ) : null}
                        </td>
                        <td>
                          <select
                            aria-label={`Identifier in column ${m.source}`}
                            value={m.identifier}
                            disabled={!m.include}
                            onChange={(e) => update(i, { identifier: e.currentTarget.value as ColumnMap['identifier'] })}
                          >
                            <option value="">none</option>
                            <option value="email">email</option>
                            <option value="phone">phone</option>
                            <option value="contact_id">contact id</option>
                          </select>
                        </td>
                        <td>
                          <input
                            type="checkbox"
                            aria-label={`Column ${m.source} is required`}
                            checked={m.required}
                            disabled={!m.include}
                            onChange={(e) => update(i, { required: e.currentTarget.checked })}
                          />
                        </td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
            {mapErrors.get('') ? <small class="field-error">{mapErrors.get('')}</small> : null}
          </fieldset>
          <fieldset>
            <legend>{session ? 'How the rows are sent' : 'Where the rows go'}</legend>
            {session ? null : (
              <>
                <Field label="Destination webhook URL" field="destination.url" problem={problem} hint="Rows are pushed here in signed batches.">
                  {(a) => <input {...a} type="url" required value={destination} onInput={(e) => setDestination(e.currentTarget.value)} />}
                </Field>
                <Field
                  label="Signing secret (optional)"
                  field="destination.secret"
                  problem={problem}
                  hint="32 bytes or more. Left empty, custody generates one and shows it once."
                >
                  {(a) => <input {...a} type="password" autocomplete="new-password" value={secret} onInput={(e) => setSecret(e.currentTarget.value)} />}
                </Field>
              </>
            )}
            {fixedPurpose ? (
              <p>
                Purpose: <code>{fixedPurpose}</code>
              </p>
            ) : purposes === undefined ? (
              session ? null : (
                <Field
                  label="Purpose (optional)"
                  field="purpose"
                  problem={problem}
                  hint="One of the purposes declared in the privacy settings; rows of subjects who withdrew consent for it are left out."
                >
                  {(a) => <input {...a} autocomplete="off" value={purpose} onInput={(e) => setPurpose(e.currentTarget.value)} />}
                </Field>
              )
            ) : purposes.length ? (
              <Field
                label="Purpose (optional)"
                field="purpose"
                problem={problem}
                hint="Rows of subjects who withdrew consent for it are left out. Restricted subjects always are."
              >
                {(a) => (
                  <select {...a} value={purpose} onChange={(e) => setPurpose(e.currentTarget.value)}>
                    <option value="">none</option>
                    {purposes.map((p) => (
                      <option key={p} value={p}>
                        {p}
                      </option>
                    ))}
                  </select>
                )}
              </Field>
            ) : null}
            <Field label="Default country code (for national phone numbers)" field="default_country_code" problem={problem}>
              {(a) => <input {...a} inputMode="numeric" placeholder="44" value={country} onInput={(e) => { setCountry(e.currentTarget.value); setChecked(null); }} />}
            </Field>
            <label>
              <input type="radio" name="mode" value="store" checked={mode === 'store'} onChange={() => setMode('store')} />
              Store: keep the file until it expires, so it can be viewed, downloaded and retried
            </label>
            <label>
              <input type="radio" name="mode" value="bypass" checked={mode === 'bypass'} onChange={() => setMode('bypass')} />
              Bypass: push the rows now and keep nothing
            </label>
            {mode === 'store' ? (
              <Field label="Keep for" field="retention_class" problem={problem}>
                {(a) => (
                  <select {...a} value={retention} onChange={(e) => setRetention(e.currentTarget.value as typeof retention)}>
                    <option value="import-30d">30 days</option>
                    <option value="import-90d">90 days</option>
                  </select>
                )}
              </Field>
            ) : null}
          </fieldset>
          <button type="button" class="secondary" onClick={check} disabled={mapErrors.size > 0}>
            Validate rows
          </button>
        </>
      ) : null}
      {checked ? (
        <section aria-labelledby="importer-check" tabIndex={-1} ref={errorsRef} class="check">
          <h3 id="importer-check">Validation</h3>
          <p role="status">
            {checked.valid.length} valid rows, {checked.invalidRows} rows with errors
            {checked.invalidRows ? ' (they will not be uploaded)' : ''}.
          </p>
          {checked.errors.length ? (
            <div class="table-wrap">
              <table class="row-errors">
                <caption>Row errors (before upload)</caption>
                <thead>
                  <tr>
                    <th scope="col">Line</th>
                    <th scope="col">Problem</th>
                  </tr>
                </thead>
                <tbody>
                  {checked.errors.slice(0, SHOWN_ERRORS).map((e, i) => (
                    <tr key={i}>
                      <td>{e.line}</td>
                      <td>{e.message}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
              {checked.errors.length > SHOWN_ERRORS ? <p>…and {checked.errors.length - SHOWN_ERRORS} more.</p> : null}
            </div>
          ) : null}
          <button type="button" onClick={start} disabled={!checked.valid.length || upload !== null || (!session && !destination.trim())}>
            Upload {checked.valid.length} valid rows
          </button>
        </section>
      ) : null}
      {upload ? (
        <p>
          <label>
            {upload.label} ({upload.total ? Math.round((upload.done / upload.total) * 100) : 0}%)
            <progress value={upload.done} max={upload.total || 1} />
          </label>
        </p>
      ) : null}
      {result ? (
        <Notice tone={result.imported.status === 'delivered' ? 'ok' : 'warn'}>
          Import <code>{result.imported.id}</code>: <Status value={result.imported.status} />, {result.imported.rows_valid} rows
          valid, {result.imported.rows_delivered} delivered ({bytes(result.imported.bytes)}).
          {leftOut(result.imported) ? <> Left out: {leftOut(result.imported)}.</> : null}
          {result.secret ? (
            <>
              {' '}
              The generated signing secret, shown this once: <code>{result.secret}</code>
            </>
          ) : null}
        </Notice>
      ) : null}
    </div>
  );
}

/** PUTs the body to the presigned URL exactly as signed, reporting progress. */
function put(upload: PresignedUpload, body: Blob, progress: (done: number) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open(upload.method || 'PUT', upload.url);
    for (const [name, value] of Object.entries(upload.headers)) {
      if (name.toLowerCase() === 'host' || name.toLowerCase() === 'content-length') continue;
      xhr.setRequestHeader(name, value);
    }
    xhr.upload.onprogress = (e) => progress(e.loaded);
    xhr.onload = () =>
      xhr.status >= 200 && xhr.status < 300 ? resolve() : reject(new Error(`The upload was refused (${xhr.status}).`));
    xhr.onerror = () => reject(new Error('The upload failed (network or CORS).'));
    xhr.send(body);
  });
}

/** Polls the import at `path` until it leaves created/processing (at most a minute). */
async function settle(api: Api, path: string): Promise<Import> {
  const until = Date.now() + 60_000;
  for (;;) {
    const current = await api.get<Import>(path);
    if (!['created', 'processing'].includes(current.status) || Date.now() > until) return current;
    await new Promise((r) => setTimeout(r, 1000));
  }
}
