// Parsing and validation of an import file, in the browser. Used in a Web Worker
// (parse.worker.ts) when one can start, else on the main thread in chunks.
import Papa from 'papaparse';

export type Row = Record<string, unknown>;
export type Format = 'csv' | 'jsonl';

export interface Parsed {
  format: Format;
  columns: string[];
  rows: Row[];
  /** 1-based line of each row in the file (the CSV header is line 1). */
  lines: number[];
  errors: RowError[];
}

export interface RowError {
  line: number;
  column?: string;
  message: string;
}

export type Progress = (fraction: number) => void;

export function formatOf(name: string): Format {
  return /\.(jsonl|ndjson)$/i.test(name) ? 'jsonl' : 'csv';
}

const CHUNK = 512 * 1024;

export function parseFile(file: Blob, format: Format, progress: Progress): Promise<Parsed> {
  return format === 'csv' ? parseCsv(file, progress) : parseJsonl(file, progress);
}

function parseCsv(file: Blob, progress: Progress): Promise<Parsed> {
  return new Promise((resolve, reject) => {
    const rows: Row[] = [];
    const lines: number[] = [];
    const errors: RowError[] = [];
    let columns: string[] = [];
    let line = 1;
    Papa.parse<Row>(file as File, {
      header: true,
      skipEmptyLines: 'greedy',
      chunkSize: CHUNK,
      transformHeader: (h) => h.trim(),
      chunk: (results) => {
        if (!columns.length && results.meta.fields) columns = results.meta.fields;
        for (const error of results.errors) {
          errors.push({ line: (error.row ?? 0) + rows.length + 2, message: error.message });
        }
        for (const row of results.data) {
          line += 1;
          rows.push(row);
          lines.push(line);
        }
        progress(Math.min(1, results.meta.cursor / Math.max(1, file.size)));
      },
      complete: () => {
        progress(1);
        resolve({ format: 'csv', columns, rows, lines, errors });
      },
      error: (err) => reject(err),
    });
  });
}

async function parseJsonl(file: Blob, progress: Progress): Promise<Parsed> {
  const rows: Row[] = [];
  const lines: number[] = [];
  const errors: RowError[] = [];
  const columns = new Set<string>();
  const decoder = new TextDecoder();
  let carry = '';
  let line = 0;
  let offset = 0;
  const take = (text: string) => {
    line += 1;
    if (!text.trim()) return;
    try {
      const value = JSON.parse(text) as unknown;
      if (value === null || typeof value !== 'object' || Array.isArray(value)) {
        errors.push({ line, message: 'not a JSON object' });
        return;
      }
      for (const key of Object.keys(value)) columns.add(key);
      rows.push(value as Row);
      lines.push(line);
    } catch {
      errors.push({ line, message: 'not valid JSON' });
    }
  };
  while (offset < file.size) {
    const slice = file.slice(offset, offset + CHUNK);
    offset += CHUNK;
    carry += decoder.decode(await slice.arrayBuffer(), { stream: offset < file.size });
    const parts = carry.split(/\r?\n/);
    carry = parts.pop() ?? '';
    parts.forEach(take);
    progress(Math.min(1, offset / file.size));
    // Let the page breathe between chunks when this runs on the main thread.
    await new Promise((r) => setTimeout(r, 0));
  }
  if (carry) take(carry);
  progress(1);
  return { format: 'jsonl', columns: [...columns], rows, lines, errors };
}

// ------------------------------------------------------------------ mapping

export type Identifier = '' | 'email' | 'phone' | 'contact_id';

export interface ColumnMap {
  source: string;
  include: boolean;
  target: string;
  identifier: Identifier;
  required: boolean;
}

const COLUMN_NAME = /^[A-Za-z_][A-Za-z0-9_. -]{0,63}$/;

export function guessIdentifier(column: string): Identifier {
  const name = column.toLowerCase().replace(/[^a-z]/g, '');
  if (/email|mail/.test(name)) return 'email';
  if (/phone|mobile|tel/.test(name)) return 'phone';
  if (/^(contactid|contact|customerid|id)$/.test(name)) return 'contact_id';
  return '';
}

export function defaultTarget(column: string): string {
  const guess = guessIdentifier(column);
  if (guess) return guess;
  const cleaned = column.trim().replace(/[^A-Za-z0-9_. -]/g, '_').replace(/^([^A-Za-z_])/, '_$1');
  return cleaned.slice(0, 64) || 'column';
}

export function initialMapping(columns: string[]): ColumnMap[] {
  return columns.map((source) => {
    const identifier = guessIdentifier(source);
    return { source, include: true, target: defaultTarget(source), identifier, required: false };
  });
}

/** Problems with the mapping itself (names the API would refuse). */
export function mappingErrors(mapping: ColumnMap[]): Map<string, string> {
  const errors = new Map<string, string>();
  const seen = new Set<string>();
  for (const m of mapping) {
    if (!m.include) continue;
    const target = m.target.trim();
    if (!COLUMN_NAME.test(target)) {
      errors.set(m.source, 'Field names start with a letter or _, then letters, digits, _ . - or spaces (at most 64).');
    } else if (seen.has(target)) {
      errors.set(m.source, `Another column is already mapped to "${target}".`);
    }
    seen.add(target);
  }
  if (!mapping.some((m) => m.include)) errors.set('', 'Map at least one column.');
  return errors;
}

const EMAIL = /^[^@\s\x00-\x1f\x7f-\x9f]+@[^@\s\x00-\x1f\x7f-\x9f]+\.[^@\s\x00-\x1f\x7f-\x9f]+$/;
const PHONE = /^[0-9+().\s-]+$/;
const CONTACT_ID = /^[!-~]{1,128}$/;

function text(value: unknown): string {
  if (value === null || value === undefined) return '';
  return typeof value === 'string' ? value.trim() : typeof value === 'object' ? JSON.stringify(value) : String(value);
}

function phoneOk(value: string, countryCode: string): boolean {
  if (!PHONE.test(value)) return false;
  const digits = value.replace(/\(0\)/, '').replace(/\D/g, '');
  const international = value.startsWith('+') || digits.startsWith('00');
  const full = international ? digits.replace(/^00/, '') : countryCode ? countryCode.replace(/\D/g, '') + digits.replace(/^0/, '') : '';
  return full.length >= 8 && full.length <= 15 && !full.startsWith('0');
}

export interface Validated {
  valid: Row[];
  errors: RowError[];
  invalidRows: number;
}

/** Maps every row and checks it as custody will; invalid rows are left out. */
export function validate(parsed: Parsed, mapping: ColumnMap[], countryCode = ''): Validated {
  const used = mapping.filter((m) => m.include);
  const valid: Row[] = [];
  const errors: RowError[] = [...parsed.errors];
  let invalidRows = 0;
  parsed.rows.forEach((row, index) => {
    const line = parsed.lines[index] ?? index + 2;
    const out: Row = {};
    let ok = true;
    for (const m of used) {
      const raw = row[m.source];
      const value = text(raw);
      const target = m.target.trim();
      let message: string | null = null;
      if (!value) {
        if (m.required) message = 'is required but empty';
      } else if (m.identifier === 'email' && !EMAIL.test(value)) {
        message = 'is not a valid email address';
      } else if (m.identifier === 'phone' && !phoneOk(value, countryCode)) {
        message = 'is not a valid phone number (8-15 digits with the country code)';
      } else if (m.identifier === 'contact_id' && !CONTACT_ID.test(value)) {
        message = 'is not a valid contact id (1-128 printable characters, no spaces)';
      }
      if (message) {
        ok = false;
        errors.push({ line, column: target, message: `${target} ${message}` });
      }
      out[target] = parsed.format === 'csv' ? value : raw ?? null;
    }
    if (ok) valid.push(out);
    else invalidRows++;
  });
  return { valid, errors, invalidRows };
}

export function identifiersOf(mapping: ColumnMap[]): { email?: string[]; phone?: string[]; contact_id?: string[] } | null {
  const out: Record<string, string[]> = {};
  for (const m of mapping) {
    if (!m.include || !m.identifier) continue;
    (out[m.identifier] ??= []).push(m.target.trim());
  }
  return Object.keys(out).length ? out : null;
}

/** The file to upload: the mapped, valid rows only. */
export function serialize(format: Format, mapping: ColumnMap[], rows: Row[]): Blob {
  const fields = mapping.filter((m) => m.include).map((m) => m.target.trim());
  if (format === 'csv') {
    const csv = Papa.unparse({ fields, data: rows.map((r) => fields.map((f) => r[f] ?? '')) }, { newline: '\r\n' });
    return new Blob([csv + '\r\n'], { type: 'text/csv' });
  }
  return new Blob(rows.map((r) => JSON.stringify(r) + '\n'), { type: 'application/x-ndjson' });
}
