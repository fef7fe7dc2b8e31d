import type { ComponentChildren, JSX } from 'preact';
import { useCallback, useEffect, useId, useRef, useState } from 'preact/hooks';
import { asProblem, type ApiError } from './api';

// ------------------------------------------------------------------ formatting

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });
const dateOnly = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

export function when(value: string | number | null | undefined): string {
  if (value === null || value === undefined || value === '') return '—';
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : dateTime.format(date);
}

export function day(value: string | number | null | undefined): string {
  if (value === null || value === undefined || value === '') return '—';
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : dateOnly.format(date);
}

export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function Time({ value }: { value: string | number | null | undefined }) {
  if (value === null || value === undefined || value === '') return <span>—</span>;
  const iso = typeof value === 'number' ? new Date(value * 1000).toISOString() : value;
  return <time dateTime={iso}>{when(value)}</time>;
}

// ------------------------------------------------------------------ badges

export type Tone = 'ok' | 'warn' | 'bad' | 'neutral';

export function Badge({ tone = 'neutral', children }: { tone?: Tone; children: ComponentChildren }) {
  return <mark class={`badge badge-${tone}`}>{children}</mark>;
}

const STATUS_TONE: Record<string, Tone> = {
  active: 'ok',
  completed: 'ok',
  complete: 'ok',
  delivered: 'ok',
  needs_reconsent: 'warn',
  running: 'neutral',
  continued: 'neutral',
  processing: 'neutral',
  created: 'neutral',
  received: 'neutral',
  pending: 'neutral',
  in_processing: 'neutral',
  identity_unverified: 'warn',
  failed: 'bad',
  delivery_failed: 'bad',
  invalid: 'bad',
  denied: 'bad',
  error: 'bad',
  not_connected: 'warn',
  not_configured: 'warn',
  expired: 'neutral',
  deleted: 'neutral',
};

export function Status({ value }: { value: string }) {
  return <Badge tone={STATUS_TONE[value] ?? 'neutral'}>{value.replace(/_/g, ' ')}</Badge>;
}

// ------------------------------------------------------------------ problems

/** Does the problem name this field (or a part of it)? */
export function names(problem: ApiError | null | undefined, field: string): boolean {
  if (!problem?.field) return false;
  return problem.field === field || problem.field.startsWith(field + '.') || problem.field.startsWith(field + '[');
}

/** The problem as a whole, announced to screen readers. */
export function ProblemBanner({ problem }: { problem: ApiError | null | undefined }) {
  if (!problem) return null;
  return (
    <div role="alert" class="problem">
      <strong>{problem.title}</strong>
      {problem.status ? ` (${problem.status})` : ''}: {problem.detail}
      {problem.field ? (
        <>
          {' '}
          <small>
            Field: <code>{problem.field}</code>
          </small>
        </>
      ) : null}
    </div>
  );
}

export interface FieldProps {
  label: ComponentChildren;
  field: string;
  problem?: ApiError | null;
  hint?: ComponentChildren;
  children: (attrs: {
    id: string;
    name: string;
    'aria-invalid'?: 'true';
    'aria-describedby'?: string;
  }) => ComponentChildren;
}

/** A label, an input, a hint and the API's complaint about this field, if any. */
export function Field({ label, field, problem, hint, children }: FieldProps) {
  const id = useId();
  const bad = names(problem, field);
  const describedBy = [hint ? `${id}-hint` : '', bad ? `${id}-error` : ''].filter(Boolean).join(' ');
  return (
    <div class="field">
      <label for={id}>{label}</label>
      {children({
        id,
        name: field,
        'aria-invalid': bad ? 'true' : undefined,
        'aria-describedby': describedBy || undefined,
      })}
      {hint ? (
        <small id={`${id}-hint`} class="hint">
          {hint}
        </small>
      ) : null}
      {bad ? (
        <small id={`${id}-error`} class="field-error" data-field={problem!.field}>
          {problem!.detail}
        </small>
      ) : null}
    </div>
  );
}

export function Notice({ children, tone = 'ok' }: { children: ComponentChildren; tone?: Tone }) {
  return (
    <p role="status" class={`notice notice-${tone}`}>
      {children}
    </p>
  );
}

// ------------------------------------------------------------------ confirm

export interface ConfirmProps {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  onConfirm: () => void | Promise<void>;
  onClose: () => void;
  /** Text the user must type before confirming. */
  typed?: string;
}

/** A modal <dialog>: focus moves in and back by itself; Escape cancels. */
export function Confirm({ title, children, confirmLabel, onConfirm, onClose, typed }: ConfirmProps) {
  const ref = useRef<HTMLDialogElement>(null);
  const [text, setText] = useState('');
  const [busy, setBusy] = useState(false);
  const headingId = useId();
  useEffect(() => {
    const dialog = ref.current;
    if (dialog && !dialog.open) dialog.showModal();
    return () => dialog?.open && dialog.close();
  }, []);
  const ready = typed === undefined || text === typed;
  return (
    <dialog ref={ref} aria-labelledby={headingId} onClose={onClose}>
      <article>
        <h2 id={headingId}>{title}</h2>
        {children}
        {typed !== undefined ? (
          <Field label={<>Type <code>{typed}</code> to confirm</>} field="confirm">
            {(a) => (
              <input {...a} autocomplete="off" value={text} onInput={(e) => setText(e.currentTarget.value)} />
            )}
          </Field>
        ) : null}
        <footer>
          <button type="button" class="secondary" onClick={() => ref.current?.close()}>
            Cancel
          </button>{' '}
          <button
            type="button"
            class="danger"
            disabled={!ready || busy}
            aria-busy={busy ? 'true' : undefined}
            onClick={async () => {
              setBusy(true);
              try {
                await onConfirm();
              } finally {
                setBusy(false);
                ref.current?.close();
              }
            }}
          >
            {confirmLabel}
          </button>
        </footer>
      </article>
    </dialog>
  );
}

// ------------------------------------------------------------------ data

export interface Loaded<T> {
  data: T | undefined;
  problem: ApiError | null;
  loading: boolean;
  reload: () => Promise<void>;
  set: (value: T) => void;
}

/** Loads `fetcher()` once and on `reload()`. */
export function useLoad<T>(fetcher: () => Promise<T>, deps: unknown[] = []): Loaded<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [problem, setProblem] = useState<ApiError | null>(null);
  const [loading, setLoading] = useState(true);
  const reload = useCallback(async () => {
    setLoading(true);
    try {
      setData(await fetcher());
      setProblem(null);
    } catch (err) {
      setProblem(asProblem(err));
    } finally {
      setLoading(false);
    }
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, deps);
  useEffect(() => {
    void reload();
  }, [reload]);
  return { data, problem, loading, reload, set: setData };
}

export function Loading({ what }: { what: string }) {
  return (
    <p aria-busy="true" role="status">
      Loading {what}…
    </p>
  );
}

export function Table({ caption, children, class: className }: { caption: ComponentChildren; children: ComponentChildren; class?: string }) {
  return (
    <div class="table-wrap" tabIndex={0} role="region" aria-label={typeof caption === 'string' ? caption : undefined}>
      <table class={className}>
        <caption>{caption}</caption>
        {children}
      </table>
    </div>
  );
}

export type Submit = JSX.TargetedSubmitEvent<HTMLFormElement>;
