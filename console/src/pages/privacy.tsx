import { Fragment } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import { asProblem, type ApiError } from '../api';
import { atLeast } from '../auth';
import { signatureBytes, verifyCertificate, type Verification } from '../cert';
import { useApp } from '../context';
import {
  RESTRICTION_GROUNDS,
  type CertificateResponse,
  type ConsentChange,
  type PrivacyKind,
  type PrivacyRequestCreated,
  type PrivacyRequestDetail,
  type PrivacyRequestSummary,
  type PrivacySettings,
  type PublicKey,
  type Restriction,
  type RestrictionGround,
} from '../types';
import { Badge, Confirm, Field, Loading, Notice, ProblemBanner, Status, Table, Time, useLoad, type Loaded, type Submit } from '../ui';

/** The grounds of a restriction of processing (GDPR Art. 18(1), or an objection under Art. 21). */
const GROUNDS: Record<RestrictionGround, string> = {
  accuracy_contested: 'Accuracy contested, while it is checked (Art. 18(1)(a))',
  unlawful_processing: 'Unlawful processing; the subject wants restriction, not erasure (Art. 18(1)(b))',
  legal_claims: 'Needed by the subject for legal claims (Art. 18(1)(c))',
  objection: 'Objection, while its grounds are weighed (Art. 18(1)(d), Art. 21)',
};

const KIND_TITLE: Record<PrivacyKind, string> = {
  access: 'Access request',
  erasure: 'Erasure request',
  restrict: 'Restriction of processing',
  rectify: 'Rectification',
};

/** A purpose as the API takes it (`ConsentPurpose`). */
const PURPOSE = /^[a-z0-9_-]{1,64}$/;
const MAX_PURPOSES = 32;

/** Acknowledge-by dates of requests filed in this tab (the list does not carry them). */
const ackDue = new Map<string, string>();

export function Privacy() {
  const { api, session } = useApp();
  const admin = atLeast(session.role, 'admin');
  const list = useLoad(() => api.get<{ requests: PrivacyRequestSummary[] }>('/privacy/requests'));
  // The privacy settings (admins only): their declared purposes feed the consent form.
  const settings = useLoad<PrivacySettings | undefined>(() =>
    admin ? api.get<PrivacySettings>('/privacy/settings') : Promise.resolve(undefined),
  );
  return (
    <>
      <h1 tabIndex={-1}>Privacy</h1>
      <p>
        Data-subject access, erasure and restriction requests, with their legal deadlines; consent records; privacy
        settings.
      </p>
      <section aria-labelledby="requests-heading">
        <h2 id="requests-heading">Open requests and restrictions in force</h2>
        <ProblemBanner problem={list.problem} />
        {list.loading && !list.data ? <Loading what="requests" /> : null}
        {list.data ? (
          list.data.requests.length ? (
            <Table caption="Open requests, the most urgent first, and restrictions in force">
              <thead>
                <tr>
                  <th scope="col">Request</th>
                  <th scope="col">Type</th>
                  <th scope="col">Regulation</th>
                  <th scope="col">Status</th>
                  <th scope="col">Received</th>
                  <th scope="col">Acknowledge by</th>
                  <th scope="col">First response by</th>
                  <th scope="col">Respond by</th>
                  <th scope="col">Days left</th>
                </tr>
              </thead>
              <tbody>
                {list.data.requests.map((r) => (
                  <tr key={r.id} data-request={r.id} data-kind={r.kind}>
                    <td>
                      <a href={`/privacy/requests/${r.id}`}>
                        <code>{r.id.slice(-8)}</code>
                        <span class="visually-hidden"> (request {r.id})</span>
                      </a>
                    </td>
                    <td>
                      {r.kind}
                      {r.restriction && !r.restriction.lifted_at ? (
                        <>
                          {' '}
                          <Badge tone="warn">restriction in force</Badge>
                          <br />
                          <small>{r.restriction.ground.replace(/_/g, ' ')}</small>
                        </>
                      ) : null}
                    </td>
                    <td>{r.regulation.toUpperCase()}</td>
                    <td>
                      <Status value={r.status} />
                    </td>
                    <td>
                      <Time value={r.received_at} />
                    </td>
                    <td>
                      <Time value={r.ack_due ?? ackDue.get(r.id)} />
                    </td>
                    <td>
                      <Time value={r.initial_response_due} />{' '}
                      {r.initial_response_overdue ? <Badge tone="bad">initial response overdue</Badge> : null}
                    </td>
                    <td>
                      <Time value={r.respond_by} /> {r.extended ? <Badge>extended</Badge> : null}
                    </td>
                    <td>{r.overdue ? <Badge tone="bad">overdue</Badge> : r.status === 'complete' ? 'answered' : r.days_left}</td>
                  </tr>
                ))}
              </tbody>
            </Table>
          ) : (
            <p>No open requests. Completed requests stay reachable from their links.</p>
          )
        ) : null}
      </section>
      {admin ? <NewRequest /> : null}
      {admin ? <Consent purposes={settings.data?.purposes ?? []} /> : null}
      {admin ? <Settings current={settings} /> : null}
    </>
  );
}

function NewRequest() {
  const { api, navigate } = useApp();
  const [kind, setKind] = useState<PrivacyKind>('access');
  const [ground, setGround] = useState<RestrictionGround | ''>('');
  const [regulation, setRegulation] = useState<'gdpr' | 'ccpa'>('gdpr');
  const [email, setEmail] = useState('');
  const [phone, setPhone] = useState('');
  const [contactId, setContactId] = useState('');
  const [country, setCountry] = useState('');
  const [note, setNote] = useState('');
  const [fixed, setFixed] = useState({ email: '', phone: '', contact_id: '' });
  const [verify, setVerify] = useState(false);
  const [holder, setHolder] = useState(false);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [busy, setBusy] = useState(false);

  const submit = async (e: Submit) => {
    e.preventDefault();
    setBusy(true);
    setProblem(null);
    const subject: Record<string, string> = {};
    if (email.trim()) subject.email = email.trim();
    if (phone.trim()) subject.phone = phone.trim();
    if (contactId.trim()) subject.contact_id = contactId.trim();
    if (country.trim()) subject.default_country_code = country.trim();
    const path = { access: '/privacy/export', erasure: '/privacy/delete', restrict: '/privacy/restrict', rectify: '/privacy/rectify' }[kind];
    // A restriction states its ground and takes no verification (it only protects the subject).
    const extra: Record<string, unknown> = kind === 'restrict' ? { ground: ground || null } : { verify_subject: verify };
    if (kind === 'rectify') {
      const corrections: Record<string, string> = {};
      for (const [k, v] of Object.entries(fixed)) if (v.trim()) corrections[k] = v.trim();
      extra.corrections = corrections;
    }
    try {
      const created = await api.post<PrivacyRequestCreated>(path, {
        subject,
        regulation,
        note: note.trim() || null,
        account_holder: holder,
        ...extra,
      });
      ackDue.set(created.id, created.ack_due);
      navigate(`/privacy/requests/${created.id}`);
    } catch (err) {
      setProblem(asProblem(err));
      setBusy(false);
    }
  };

  return (
    <section aria-labelledby="new-heading">
      <h2 id="new-heading">New request</h2>
      <form onSubmit={submit} novalidate>
        <ProblemBanner problem={problem} />
        <fieldset>
          <legend>Type</legend>
          <label>
            <input type="radio" name="kind" value="access" checked={kind === 'access'} onChange={() => setKind('access')} />
            Access (export the subject's data)
          </label>
          <label>
            <input type="radio" name="kind" value="erasure" checked={kind === 'erasure'} onChange={() => setKind('erasure')} />
            Erasure (delete the subject's data, with a certificate)
          </label>
          <label>
            <input type="radio" name="kind" value="restrict" checked={kind === 'restrict'} onChange={() => setKind('restrict')} />
            Restrict processing (leave the subject out of imports and exports until lifted)
          </label>
          <label>
            <input type="radio" name="kind" value="rectify" checked={kind === 'rectify'} onChange={() => setKind('rectify')} />
            Rectification (correct the subject's identifiers in every stored import)
          </label>
        </fieldset>
        {kind === 'restrict' ? (
          <Field label="Ground" field="ground" problem={problem} hint="In force as soon as it is filed.">
            {(a) => (
              <select {...a} required value={ground} onChange={(e) => setGround(e.currentTarget.value as RestrictionGround | '')}>
                <option value="" disabled>
                  Choose the ground…
                </option>
                {RESTRICTION_GROUNDS.map((g) => (
                  <option key={g} value={g}>
                    {GROUNDS[g]}
                  </option>
                ))}
              </select>
            )}
          </Field>
        ) : null}
        <Field label="Regulation" field="regulation" problem={problem}>
          {(a) => (
            <select {...a} value={regulation} onChange={(e) => setRegulation(e.currentTarget.value as 'gdpr' | 'ccpa')}>
              <option value="gdpr">GDPR (one month, extendable by two)</option>
              <option value="ccpa">CCPA (45 days, extendable by 45)</option>
            </select>
          )}
        </Field>
        <fieldset aria-describedby="subject-hint">
          <legend>Subject</legend>
          <small id="subject-hint" class="hint">
            At least one identifier.
          </small>
          {problem?.field === 'subject' ? <small class="field-error">{problem.detail}</small> : null}
          <div class="grid">
            <Field label="Email" field="subject.email" problem={problem}>
              {(a) => <input {...a} type="email" autocomplete="off" value={email} onInput={(e) => setEmail(e.currentTarget.value)} />}
            </Field>
            <Field label="Phone" field="subject.phone" problem={problem}>
              {(a) => <input {...a} type="tel" autocomplete="off" value={phone} onInput={(e) => setPhone(e.currentTarget.value)} />}
            </Field>
          </div>
          <div class="grid">
            <Field label="Contact id" field="subject.contact_id" problem={problem}>
              {(a) => <input {...a} autocomplete="off" value={contactId} onInput={(e) => setContactId(e.currentTarget.value)} />}
            </Field>
            <Field label="Country code (national phone numbers)" field="subject.default_country_code" problem={problem}>
              {(a) => <input {...a} inputMode="numeric" value={country} onInput={(e) => setCountry(e.currentTarget.value)} />}
            </Field>
          </div>
        </fieldset>
        {kind === 'rectify' ? (
          <fieldset aria-describedby="corrections-hint">
            <legend>Corrected values</legend>
            <small id="corrections-hint" class="hint">
              At least one. Each corrects the identifier of the same kind given above, which must be its current value.
            </small>
            {problem?.field === 'corrections' ? <small class="field-error">{problem.detail}</small> : null}
            <div class="grid">
              <Field label="Corrected email" field="corrections.email" problem={problem}>
                {(a) => (
                  <input {...a} type="email" autocomplete="off" value={fixed.email} onInput={(e) => setFixed({ ...fixed, email: e.currentTarget.value })} />
                )}
              </Field>
              <Field label="Corrected phone" field="corrections.phone" problem={problem}>
                {(a) => (
                  <input {...a} type="tel" autocomplete="off" value={fixed.phone} onInput={(e) => setFixed({ ...fixed, phone: e.currentTarget.value })} />
                )}
              </Field>
              <Field label="Corrected contact id" field="corrections.contact_id" problem={problem}>
                {(a) => (
                  <input
                    {...a}
                    autocomplete="off"
                    value={fixed.contact_id}
                    onInput={(e) => setFixed({ ...fixed, contact_id: e.currentTarget.value })}
                  />
                )}
              </Field>
            </div>
          </fieldset>
        ) : null}
        <Field label="Note (optional)" field="note" problem={problem}>
          {(a) => <textarea {...a} maxLength={1000} value={note} onInput={(e) => setNote(e.currentTarget.value)} />}
        </Field>
        {kind === 'restrict' ? null : (
          <label>
            <input type="checkbox" name="verify_subject" checked={verify} onChange={(e) => setVerify(e.currentTarget.checked)} />
            Verify the subject first (sends a one-time code through the verification webhook)
          </label>
        )}
        <label>
          <input type="checkbox" name="account_holder" checked={holder} onChange={(e) => setHolder(e.currentTarget.checked)} />
          The subject is the account holder
        </label>
        <button type="submit" disabled={busy || (kind === 'restrict' && !ground)} aria-busy={busy ? 'true' : undefined}>
          {kind === 'restrict' ? 'File restriction' : kind === 'rectify' ? 'File rectification request' : `File ${kind} request`}
        </button>
      </form>
    </section>
  );
}

const ACTIVE = ['received', 'pending', 'in_processing'];

export function PrivacyRequest({ id }: { id: string }) {
  const { api, session } = useApp();
  const operator = atLeast(session.role, 'operator');
  const admin = atLeast(session.role, 'admin');
  const request = useLoad(() => api.get<PrivacyRequestDetail>(`/privacy/requests/${id}`), [id]);
  const timer = useRef<number | undefined>();
  const r = request.data;

  // Follow a request that is still being processed.
  useEffect(() => {
    clearTimeout(timer.current);
    if (r && ACTIVE.includes(r.status)) timer.current = window.setTimeout(() => void request.reload(), 2000);
    return () => clearTimeout(timer.current);
  }, [r]);

  return (
    <>
      <h1 tabIndex={-1}>
        {r ? KIND_TITLE[r.kind] ?? 'Privacy request' : 'Privacy request'} <code>{id.slice(-8)}</code>
      </h1>
      <p>
        <a href="/privacy">Back to privacy</a>
      </p>
      <ProblemBanner problem={request.problem} />
      {request.loading && !r ? <Loading what="the request" /> : null}
      {r ? (
        <>
          <p>
            Status: <Status value={r.status} /> {r.days_left < 0 && r.status !== 'complete' ? <Badge tone="bad">overdue</Badge> : null}
            {r.initial_response_overdue ? <Badge tone="bad">initial response overdue</Badge> : null}
            {r.restriction ? (
              r.restriction.lifted_at ? <Badge>restriction lifted</Badge> : <Badge tone="warn">restriction in force</Badge>
            ) : null}
            {ACTIVE.includes(r.status) ? <span aria-busy="true"> processing…</span> : null}
          </p>
          <h2>Timeline</h2>
          <ol class="timeline">
            <li>
              Received <Time value={r.deadlines.received_at} /> ({r.regulation.toUpperCase()})
            </li>
            <li>
              Acknowledged <Time value={r.acknowledged_at} />{' '}
              {r.acknowledged_in_time ? '(in time' : '(late'}; due by <Time value={r.deadlines.ack_due} />)
            </li>
            {r.deadlines.initial_response_due || r.initial_response_at ? (
              <li>
                {r.initial_response_at ? (
                  <>
                    First substantive response <Time value={r.initial_response_at} />
                  </>
                ) : (
                  <>First substantive response not given yet</>
                )}
                {r.deadlines.initial_response_due ? (
                  <>
                    {' '}
                    (due by <Time value={r.deadlines.initial_response_due} />)
                  </>
                ) : null}{' '}
                {r.initial_response_overdue ? <Badge tone="bad">initial response overdue</Badge> : null}
              </li>
            ) : null}
            {r.extension ? (
              <li>
                Extended <Time value={r.extension.extended_at} /> by{' '}
                {'months' in r.extension.length ? `${r.extension.length.months} months` : `${r.extension.length.days} days`} (was
                due <Time value={r.extension.previous_due_at} />)
              </li>
            ) : null}
            {r.steps_done.length ? <li>Steps done: {r.steps_done.join(', ')}</li> : null}
            <li>
              {r.completed_at ? (
                <>
                  Completed <Time value={r.completed_at} />
                </>
              ) : (
                <>
                  Respond by <Time value={r.respond_by} /> ({r.days_left} days left; legal deadline <Time value={r.deadlines.due_at} />)
                </>
              )}
            </li>
          </ol>
          {r.denial_reason ? <Notice tone="bad">Denied: {r.denial_reason.replace(/_/g, ' ')}</Notice> : null}
          {r.restriction ? <RestrictionView id={id} restriction={r.restriction} admin={admin} onLifted={() => request.reload()} /> : null}
          {r.erased ? (
            <dl>
              {Object.entries(r.erased).map(([k, v]) => (
                <Fragment key={k}>
                  <dt>{k.replace(/_/g, ' ')}</dt>
                  <dd>{v}</dd>
                </Fragment>
              ))}
            </dl>
          ) : null}
          {r.rectification ? (
            <section aria-labelledby="rectification-heading" data-rectification={r.status}>
              <h2 id="rectification-heading">Rectification</h2>
              <p>Corrected: {r.rectification.corrected.map((k) => k.replace(/_/g, ' ')).join(', ')} (the values are never shown).</p>
              <dl>
                {Object.entries(r.rectification)
                  .filter(([k]) => k !== 'corrected')
                  .map(([k, v]) => (
                    <Fragment key={k}>
                      <dt>{k.replace(/_/g, ' ')}</dt>
                      <dd>{String(v)}</dd>
                    </Fragment>
                  ))}
              </dl>
            </section>
          ) : null}
          {r.notices?.length ? (
            <Table caption="Notices to the account">
              <thead>
                <tr>
                  <th scope="col">Notice</th>
                  <th scope="col">Delivery</th>
                  <th scope="col">Attempts</th>
                  <th scope="col">Delivered</th>
                </tr>
              </thead>
              <tbody>
                {r.notices.map((n) => (
                  <tr key={n.event_id} data-notice={n.type}>
                    <td>{n.type.replace(/^privacy_request\./, '').replace(/_/g, ' ')}</td>
                    <td>
                      <Status value={n.status} />
                      {n.channels?.length
                        ? n.channels.map((c) => (
                            <span key={c.channel}>
                              {' '}
                              {c.channel}: {c.status}
                            </span>
                          ))
                        : null}
                    </td>
                    <td>{n.attempts}</td>
                    <td>
                      <Time value={n.delivered_at} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </Table>
          ) : null}
          {r.status === 'identity_unverified' && operator ? <VerifyCode id={id} onDone={() => request.reload()} /> : null}
          {admin && !r.extension && r.kind !== 'restrict' && !['complete', 'denied'].includes(r.status) ? (
            <Extend id={id} regulation={r.regulation} onDone={() => request.reload()} />
          ) : null}
          {r.download ? (
            <section aria-labelledby="bundle-heading">
              <h2 id="bundle-heading">Access bundle</h2>
              <p>
                <a href={r.download.url} target="_blank" rel="noopener noreferrer">
                  Download the bundle
                </a>{' '}
                ({r.download.bytes} bytes, SHA-256 <code class="hash">{r.download.sha256}</code>; link valid until{' '}
                <Time value={r.download.expires_at} />)
              </p>
            </section>
          ) : null}
          {r.certificate_available ? <CertificateView id={id} /> : null}
        </>
      ) : null}
    </>
  );
}

function VerifyCode({ id, onDone }: { id: string; onDone: () => void }) {
  const { api } = useApp();
  const [code, setCode] = useState('');
  const [problem, setProblem] = useState<ApiError | null>(null);
  const submit = async (e: Submit) => {
    e.preventDefault();
    setProblem(null);
    try {
      await api.post(`/privacy/requests/${id}/verify`, { code: code.trim() });
      onDone();
    } catch (err) {
      const problem = asProblem(err);
      setProblem(problem);
      // Too many wrong codes: the request is denied now; show it as it stands.
      if (problem.slug === 'verification-locked') onDone();
    }
  };
  return (
    <section aria-labelledby="verify-heading">
      <h2 id="verify-heading">Verify the subject</h2>
      <form onSubmit={submit} novalidate>
        <ProblemBanner problem={problem} />
        <Field label="The code the subject received" field="code" problem={problem} hint="Three wrong codes deny the request.">
          {(a) => <input {...a} autocomplete="one-time-code" value={code} onInput={(e) => setCode(e.currentTarget.value)} />}
        </Field>
        <button type="submit">Verify</button>
      </form>
    </section>
  );
}

function RestrictionView({
  id,
  restriction,
  admin,
  onLifted,
}: {
  id: string;
  restriction: Restriction;
  admin: boolean;
  onLifted: () => void;
}) {
  const { api } = useApp();
  const [reason, setReason] = useState('');
  const [confirming, setConfirming] = useState(false);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const lift = async () => {
    setProblem(null);
    try {
      await api.post<{ id: string; restriction: Restriction }>(`/privacy/requests/${id}/lift`, { reason: reason.trim() });
      setNotice('Restriction lifted: processing of the subject\'s data resumes (imports push their rows, exports include them).');
      setReason('');
      onLifted();
    } catch (err) {
      setProblem(asProblem(err));
    }
  };
  return (
    <section aria-labelledby="restriction-heading" data-restriction={restriction.lifted_at ? 'lifted' : 'in-force'}>
      <h2 id="restriction-heading">Restriction of processing</h2>
      {notice ? <Notice>{notice}</Notice> : null}
      <dl>
        <dt>Ground</dt>
        <dd>{GROUNDS[restriction.ground] ?? restriction.ground}</dd>
        <dt>In force since</dt>
        <dd>
          <Time value={restriction.since} />
        </dd>
        <dt>Lifted</dt>
        <dd>
          {restriction.lifted_at ? (
            <>
              <Time value={restriction.lifted_at} />
              {restriction.lifted_by ? <> by {restriction.lifted_by}</> : null}
              {restriction.lift_reason ? <>: {restriction.lift_reason}</> : null}
            </>
          ) : (
            'not lifted: the subject is left out of import pushes and exports'
          )}
        </dd>
      </dl>
      {admin && !restriction.lifted_at ? (
        <form
          onSubmit={(e: Submit) => {
            e.preventDefault();
            if (reason.trim()) setConfirming(true);
          }}
          novalidate
        >
          <ProblemBanner problem={problem} />
          <Field
            label="Reason for lifting (the subject is told before it ends)"
            field="reason"
            problem={problem}
            hint="Required. Kept on the request."
          >
            {(a) => <textarea {...a} required maxLength={1000} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />}
          </Field>
          <button type="submit" class="secondary" disabled={!reason.trim()}>
            Lift restriction
          </button>
        </form>
      ) : null}
      {confirming ? (
        <Confirm title="Lift the restriction?" confirmLabel="Lift restriction" onConfirm={lift} onClose={() => setConfirming(false)}>
          <p>
            Processing of the subject's data resumes at once: imports push their rows again and exports include them
            (unless another restriction in force covers the subject).
          </p>
        </Confirm>
      ) : null}
    </section>
  );
}

function Extend({ id, regulation, onDone }: { id: string; regulation: 'gdpr' | 'ccpa'; onDone: () => void }) {
  const { api } = useApp();
  const [reason, setReason] = useState('');
  const [length, setLength] = useState(regulation === 'gdpr' ? '2' : '45');
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const submit = async (e: Submit) => {
    e.preventDefault();
    setProblem(null);
    try {
      const done = await api.post<{ respond_by: string; notice: string }>(`/privacy/requests/${id}/extend`, {
        reason,
        ...(regulation === 'gdpr' ? { months: Number(length) } : { days: Number(length) }),
      });
      setNotice(done.notice);
      onDone();
    } catch (err) {
      setProblem(asProblem(err));
    }
  };
  return (
    <section aria-labelledby="extend-heading">
      <h2 id="extend-heading">Extend the deadline</h2>
      <form onSubmit={submit} novalidate>
        <ProblemBanner problem={problem} />
        {notice ? <Notice>{notice}</Notice> : null}
        <Field label="Reason (told to the subject)" field="reason" problem={problem}>
          {(a) => <textarea {...a} required maxLength={1000} value={reason} onInput={(e) => setReason(e.currentTarget.value)} />}
        </Field>
        <Field label={regulation === 'gdpr' ? 'By months (1-2)' : 'By days (1-45)'} field={regulation === 'gdpr' ? 'months' : 'days'} problem={problem}>
          {(a) => (
            <input {...a} type="number" min={1} max={regulation === 'gdpr' ? 2 : 45} value={length} onInput={(e) => setLength(e.currentTarget.value)} />
          )}
        </Field>
        <button type="submit" class="secondary">
          Extend once
        </button>
      </form>
    </section>
  );
}

function CertificateView({ id }: { id: string }) {
  const { api } = useApp();
  const [cert, setCert] = useState<CertificateResponse | null>(null);
  const [key, setKey] = useState<PublicKey | null>(null);
  const [result, setResult] = useState<Verification | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [files, setFiles] = useState<{ doc: string; sig: string; pem: string } | null>(null);

  useEffect(() => {
    let urls: string[] = [];
    (async () => {
      try {
        const [c, k] = await Promise.all([
          api.get<CertificateResponse>(`/privacy/requests/${id}/certificate`),
          api.get<PublicKey>('/privacy/public-key'),
        ]);
        setCert(c);
        setKey(k);
        setResult(await verifyCertificate(c, k));
        urls = [
          URL.createObjectURL(new Blob([c.document], { type: 'application/json' })),
          URL.createObjectURL(new Blob([signatureBytes(c)], { type: 'application/octet-stream' })),
          URL.createObjectURL(new Blob([k.pem], { type: 'application/x-pem-file' })),
        ];
        setFiles({ doc: urls[0], sig: urls[1], pem: urls[2] });
      } catch (err) {
        setProblem(asProblem(err));
      }
    })();
    return () => urls.forEach((u) => URL.revokeObjectURL(u));
  }, [id]);

  return (
    <section aria-labelledby="cert-heading">
      <h2 id="cert-heading">Certificate of deletion</h2>
      <ProblemBanner problem={problem} />
      {!cert && !problem ? <Loading what="the certificate" /> : null}
      {result ? (
        result.ok ? (
          <p role="status" class="verified" data-verified="true">
            <Badge tone="ok">Signature verified</Badge> in this browser with WebCrypto (ECDSA P-256, SHA-256) against the
            published key <code>{key?.key_id}</code>.
          </p>
        ) : (
          <p role="alert" class="problem" data-verified="false">
            The signature does NOT verify: {result.reason}.
          </p>
        )
      ) : null}
      {cert ? (
        <>
          <dl>
            <dt>Certificate</dt>
            <dd>
              <code>{cert.certificate.certificate_id}</code> ({cert.certificate.scope})
            </dd>
            <dt>Erased</dt>
            <dd>
              <Time value={cert.certificate.erased_at} />, issued <Time value={cert.certificate.issued_at} />
            </dd>
            <dt>Subject pseudonyms</dt>
            <dd>{cert.certificate.subject_pseudonyms.length}</dd>
            <dt>Audit head hash</dt>
            <dd>
              <code class="hash">{cert.certificate.audit_head_hash}</code>
            </dd>
          </dl>
          <Table caption="What was erased">
            <thead>
              <tr>
                <th scope="col">Store</th>
                <th scope="col">Unit</th>
                <th scope="col">Count</th>
              </tr>
            </thead>
            <tbody>
              {cert.certificate.erased.map((e, i) => (
                <tr key={i}>
                  <td>{e.store}</td>
                  <td>{e.unit}</td>
                  <td>{e.count}</td>
                </tr>
              ))}
            </tbody>
          </Table>
          <h3>Verify it yourself, offline</h3>
          {files ? (
            <p>
              Download <a href={files.doc} download="certificate.json">certificate.json</a> (the exact signed bytes),{' '}
              <a href={files.sig} download="certificate.sig">certificate.sig</a> (DER signature) and{' '}
              <a href={files.pem} download="custody-public-key.pem">custody-public-key.pem</a>, then run:
            </p>
          ) : null}
          <pre>
            <code>openssl dgst -sha256 -verify custody-public-key.pem -signature certificate.sig certificate.json</code>
          </pre>
          <p>
            It prints <code>Verified OK</code>. The public key is also published at <code>GET /privacy/public-key</code>.
          </p>
        </>
      ) : null}
    </section>
  );
}

function Consent({ purposes }: { purposes: string[] }) {
  const { api } = useApp();
  const [email, setEmail] = useState('');
  const [phone, setPhone] = useState('');
  const [contactId, setContactId] = useState('');
  const [records, setRecords] = useState<{ purpose: string; current: ConsentChange; history: ConsentChange[] }[] | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [purpose, setPurpose] = useState('');
  const [state, setState] = useState<'granted' | 'withdrawn'>('granted');
  const [source, setSource] = useState('web_form');
  const [policy, setPolicy] = useState('');
  const [notice, setNotice] = useState<string | null>(null);

  const subject = () => {
    const s: Record<string, string> = {};
    if (email.trim()) s.email = email.trim();
    if (phone.trim()) s.phone = phone.trim();
    if (contactId.trim()) s.contact_id = contactId.trim();
    return s;
  };
  const lookup = async (e?: Submit) => {
    e?.preventDefault();
    setProblem(null);
    try {
      const got = await api.post<{ consent: { purpose: string; current: ConsentChange; history: ConsentChange[] }[] }>(
        '/privacy/consent/lookup',
        { subject: subject() },
      );
      setRecords(got.consent);
    } catch (err) {
      setProblem(asProblem(err));
    }
  };
  const record = async (e: Submit) => {
    e.preventDefault();
    setProblem(null);
    setNotice(null);
    try {
      const done = await api.put<{ purpose: string; current: ConsentChange; version: number }>('/privacy/consent', {
        subject: subject(),
        purpose: purpose.trim(),
        state,
        source: source.trim(),
        policy_version: policy.trim(),
      });
      setNotice(`Recorded: ${done.purpose} ${done.current.state} (version ${done.version}).`);
      await lookup();
    } catch (err) {
      setProblem(asProblem(err));
    }
  };

  return (
    <section aria-labelledby="consent-heading">
      <h2 id="consent-heading">Consent</h2>
      <form onSubmit={lookup} novalidate>
        <ProblemBanner problem={problem} />
        <fieldset>
          <legend>Subject</legend>
          {problem?.field === 'subject' ? <small class="field-error">{problem.detail}</small> : null}
          <div class="grid">
            <Field label="Email" field="subject.email" problem={problem}>
              {(a) => <input {...a} type="email" autocomplete="off" value={email} onInput={(e) => setEmail(e.currentTarget.value)} />}
            </Field>
            <Field label="Phone" field="subject.phone" problem={problem}>
              {(a) => <input {...a} type="tel" autocomplete="off" value={phone} onInput={(e) => setPhone(e.currentTarget.value)} />}
            </Field>
            <Field label="Contact id" field="subject.contact_id" problem={problem}>
              {(a) => <input {...a} autocomplete="off" value={contactId} onInput={(e) => setContactId(e.currentTarget.value)} />}
            </Field>
          </div>
        </fieldset>
        <button type="submit" class="secondary">
          Look up consent
        </button>
      </form>
      {records ? (
        records.length ? (
          <Table caption="Consent records of the subject">
            <thead>
              <tr>
                <th scope="col">Purpose</th>
                <th scope="col">State</th>
                <th scope="col">Since</th>
                <th scope="col">Source</th>
                <th scope="col">Policy</th>
                <th scope="col">Changes</th>
              </tr>
            </thead>
            <tbody>
              {records.map((r) => (
                <tr key={r.purpose}>
                  <td>{r.purpose}</td>
                  <td>
                    <Badge tone={r.current.state === 'granted' ? 'ok' : 'warn'}>{r.current.state}</Badge>
                  </td>
                  <td>
                    <Time value={r.current.at} />
                  </td>
                  <td>{r.current.source}</td>
                  <td>{r.current.policy_version}</td>
                  <td>{r.history.length}</td>
                </tr>
              ))}
            </tbody>
          </Table>
        ) : (
          <p>No consent recorded for this subject.</p>
        )
      ) : null}
      <form onSubmit={record} novalidate>
        <h3>Record a consent change for the subject above</h3>
        {notice ? <Notice>{notice}</Notice> : null}
        <div class="grid">
          {purposes.length ? (
            <Field label="Purpose" field="purpose" problem={problem} hint="One of the purposes declared in the privacy settings.">
              {(a) => (
                <select {...a} required value={purpose} onChange={(e) => setPurpose(e.currentTarget.value)}>
                  <option value="" disabled>
                    Choose a purpose…
                  </option>
                  {purposes.map((p) => (
                    <option key={p} value={p}>
                      {p}
                    </option>
                  ))}
                </select>
              )}
            </Field>
          ) : (
            <Field label="Purpose" field="purpose" problem={problem} hint="Lower case, digits, _ and -, e.g. marketing_email.">
              {(a) => <input {...a} value={purpose} onInput={(e) => setPurpose(e.currentTarget.value)} />}
            </Field>
          )}
          <Field label="State" field="state" problem={problem}>
            {(a) => (
              <select {...a} value={state} onChange={(e) => setState(e.currentTarget.value as 'granted' | 'withdrawn')}>
                <option value="granted">granted</option>
                <option value="withdrawn">withdrawn</option>
              </select>
            )}
          </Field>
        </div>
        <div class="grid">
          <Field label="Source" field="source" problem={problem}>
            {(a) => <input {...a} value={source} onInput={(e) => setSource(e.currentTarget.value)} />}
          </Field>
          <Field label="Policy version" field="policy_version" problem={problem}>
            {(a) => <input {...a} value={policy} onInput={(e) => setPolicy(e.currentTarget.value)} />}
          </Field>
        </div>
        <button type="submit" class="secondary">
          Record consent
        </button>
      </form>
    </section>
  );
}

function Settings({ current }: { current: Loaded<PrivacySettings | undefined> }) {
  return (
    <section aria-labelledby="privacy-settings-heading">
      <h2 id="privacy-settings-heading">Privacy settings</h2>
      <ProblemBanner problem={current.problem} />
      {current.data ? (
        <SettingsForm current={current.data} onSaved={current.set} />
      ) : current.loading ? (
        <Loading what="settings" />
      ) : null}
    </section>
  );
}

function sameList(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** A webhook field pair's change for a partial update: undefined when unchanged. */
function webhookChange(before: string | undefined, url: string, secret: string): null | { url: string; secret: string } | undefined {
  if (!url.trim()) return before ? null : undefined;
  if (url.trim() === before && !secret) return undefined;
  return { url: url.trim(), secret };
}

/** The privacy settings; saving sends only what changed (`PUT /privacy/settings` is a partial update). */
function SettingsForm({ current, onSaved }: { current: PrivacySettings; onSaved: (s: PrivacySettings) => void }) {
  const { api } = useApp();
  const hasNotification = 'notification_webhook' in current;
  const [zone, setZone] = useState(current.time_zone);
  const [url, setUrl] = useState(current.verification_webhook?.url ?? '');
  const [secret, setSecret] = useState('');
  const [noticeUrl, setNoticeUrl] = useState(current.notification_webhook?.url ?? '');
  const [noticeSecret, setNoticeSecret] = useState('');
  const [noticeEmail, setNoticeEmail] = useState(current.notification_email ?? '');
  const [purposes, setPurposes] = useState<string[]>(current.purposes ?? []);
  const [adding, setAdding] = useState('');
  const [addError, setAddError] = useState<string | null>(null);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [notice, setNotice] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  const add = () => {
    const p = adding.trim();
    if (!PURPOSE.test(p)) return setAddError('1-64 characters: lower case letters, digits, _ and -.');
    if (purposes.includes(p)) return setAddError(`${p} is declared already.`);
    if (purposes.length >= MAX_PURPOSES) return setAddError(`At most ${MAX_PURPOSES} purposes.`);
    setPurposes([...purposes, p]);
    setAdding('');
    setAddError(null);
  };

  const submit = async (e: Submit) => {
    e.preventDefault();
    setProblem(null);
    setNotice(null);
    const body: Record<string, unknown> = {};
    if (zone.trim() !== current.time_zone) body.time_zone = zone.trim() || null;
    if (!sameList(purposes, current.purposes ?? [])) body.purposes = purposes;
    const verification = webhookChange(current.verification_webhook?.url, url, secret);
    if (verification !== undefined) body.verification_webhook = verification;
    if (hasNotification) {
      const notification = webhookChange(current.notification_webhook?.url, noticeUrl, noticeSecret);
      if (notification !== undefined) body.notification_webhook = notification;
    }
    if (current.notification_email_enabled && noticeEmail.trim() !== (current.notification_email ?? '')) {
      body.notification_email = noticeEmail.trim() || null;
    }
    if (!Object.keys(body).length) {
      setNotice('Nothing changed.');
      return;
    }
    setBusy(true);
    try {
      const saved = await api.put<PrivacySettings>('/privacy/settings', body);
      setSecret('');
      setNoticeSecret('');
      setPurposes(saved.purposes ?? purposes);
      setNotice(`Privacy settings saved (${Object.keys(body).map((k) => k.replace(/_/g, ' ')).join(', ')}).`);
      onSaved(saved);
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setBusy(false);
    }
  };
  const purposeProblem = problem?.field?.startsWith('purposes') ? problem : null;
  const badIndex = purposeProblem ? Number(/\[(\d+)\]/.exec(purposeProblem.field ?? '')?.[1] ?? -1) : -1;
  return (
    <form onSubmit={submit} novalidate>
      <ProblemBanner problem={problem} />
      {notice ? <Notice>{notice}</Notice> : null}
      <Field label="Time zone for deadlines" field="time_zone" problem={problem}>
        {(a) => <input {...a} value={zone} onInput={(e) => setZone(e.currentTarget.value)} />}
      </Field>
      <fieldset aria-describedby="purposes-hint">
        <legend>Declared purposes</legend>
        <small id="purposes-hint" class="hint">
          The purposes the account processes personal data for (at most {MAX_PURPOSES}). Once any is declared, consent is
          recorded for these only, and an import may name one so that subjects who withdrew consent for it are left out.
        </small>
        {purposes.length ? (
          <ul class="purposes" aria-label="Declared purposes">
            {purposes.map((p, i) => (
              <li key={p} data-purpose={p}>
                <code>{p}</code>
                {i === badIndex ? <small class="field-error"> {purposeProblem!.detail}</small> : null}{' '}
                <button
                  type="button"
                  class="secondary outline"
                  aria-label={`Remove purpose ${p}`}
                  onClick={() => setPurposes(purposes.filter((x) => x !== p))}
                >
                  Remove
                </button>
              </li>
            ))}
          </ul>
        ) : (
          <p>No purposes declared: consent may name any purpose, and imports none.</p>
        )}
        <div class="field add-purpose">
          <label for="add-purpose">Add a purpose</label>
          <div role="group">
            <input
              id="add-purpose"
              placeholder="marketing_email"
              autocomplete="off"
              value={adding}
              aria-invalid={addError ? 'true' : undefined}
              aria-describedby={addError ? 'add-purpose-error' : undefined}
              onInput={(e) => {
                setAdding(e.currentTarget.value);
                setAddError(null);
              }}
              onKeyDown={(e) => {
                if (e.key === 'Enter') {
                  e.preventDefault();
                  add();
                }
              }}
            />
            <button type="button" class="secondary" onClick={add}>
              Add purpose
            </button>
          </div>
          {addError ? (
            <small id="add-purpose-error" class="field-error">
              {addError}
            </small>
          ) : null}
        </div>
        {purposeProblem && badIndex < 0 ? <small class="field-error">{purposeProblem.detail}</small> : null}
      </fieldset>
      <fieldset>
        <legend>Verification webhook</legend>
        <Field
          label="Verification webhook URL (empty for none)"
          field="verification_webhook.url"
          problem={problem}
          hint="custody posts one-time codes for subjects here."
        >
          {(a) => <input {...a} type="url" value={url} onInput={(e) => setUrl(e.currentTarget.value)} />}
        </Field>
        {url.trim() ? (
          <Field
            label="Webhook signing secret"
            field="verification_webhook.secret"
            problem={problem}
            hint="32 bytes or more, write-only. Needed only to set a new URL or secret; left empty, the stored one stays."
          >
            {(a) => <input {...a} type="password" autocomplete="new-password" value={secret} onInput={(e) => setSecret(e.currentTarget.value)} />}
          </Field>
        ) : null}
      </fieldset>
      {hasNotification ? (
        <fieldset>
          <legend>Notification webhook</legend>
          <Field
            label="Notification webhook URL (empty for none)"
            field="notification_webhook.url"
            problem={problem}
            hint="custody posts privacy notices here (request received, extended, completed, deadlines approaching, …)."
          >
            {(a) => <input {...a} type="url" value={noticeUrl} onInput={(e) => setNoticeUrl(e.currentTarget.value)} />}
          </Field>
          {noticeUrl.trim() ? (
            <Field
              label="Notification webhook signing secret"
              field="notification_webhook.secret"
              problem={problem}
              hint="32 bytes or more, write-only. Needed only to set a new URL or secret; left empty, the stored one stays."
            >
              {(a) => (
                <input {...a} type="password" autocomplete="new-password" value={noticeSecret} onInput={(e) => setNoticeSecret(e.currentTarget.value)} />
              )}
            </Field>
          ) : null}
          {current.notification_email_enabled ? (
            <Field
              label="Notification e-mail (empty for none)"
              field="notification_email"
              problem={problem}
              hint="The same notices, e-mailed through Amazon SES as well as posted."
            >
              {(a) => <input {...a} type="email" autocomplete="email" value={noticeEmail} onInput={(e) => setNoticeEmail(e.currentTarget.value)} />}
            </Field>
          ) : null}
        </fieldset>
      ) : null}
      <button type="submit" class="secondary" disabled={busy} aria-busy={busy ? 'true' : undefined}>
        Save privacy settings
      </button>
    </form>
  );
}
