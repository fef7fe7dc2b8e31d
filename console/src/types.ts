// Shapes of openapi.yaml's schemas that the console reads.

export interface ProviderAccount {
  location_id?: string;
  company_id?: string;
  user_type?: string;
  subject?: string;
}
export interface ConnectionSummary {
  provider: string;
  status: 'active' | 'needs_reconsent';
  account: ProviderAccount;
  scopes: string[];
  connected_at: string;
  access_expires_at: string;
}

export const CHANNELS = ['SMS', 'Email', 'Call', 'WhatsApp', 'Instagram', 'Facebook'] as const;
export type Channel = (typeof CHANNELS)[number];

export type DateRange =
  | { mode: 'since_last_run'; initial_days?: number | null }
  | { mode: 'rolling'; days: number }
  | { mode: 'fixed'; start: string; end: string };

export interface ExportSettings {
  schedule: { expression: string; timezone: string };
  schedule_active: boolean;
  /** When an active cron schedule next runs (null for rates and inactive schedules). */
  next_run_at?: string | null;
  channels: Channel[];
  date_range: DateRange;
  destination:
    | { type: 'webdav'; url: string; username: string; password_set: true }
    | { type: 's3'; bucket: string; prefix: string; role_arn: string | null };
  updated_at: string;
}

export interface ExportRun {
  run_id: string;
  status: 'running' | 'continued' | 'failed' | 'completed' | 'not_connected' | 'needs_reconsent' | 'not_configured';
  trigger: 'schedule' | 'kick';
  started_at: string;
  finished_at: string | null;
  window: { start: string | null; end: string };
  channels: Channel[];
  conversations: number;
  messages: number;
  bytes: number;
  requests: number;
  invocations: number;
  errors: { at: string; kind: string; detail: string }[];
}

export interface LineError {
  batch?: number;
  line: number;
  message: string;
}
export interface IdentifierFields {
  email?: string[];
  phone?: string[];
  contact_id?: string[];
}
export interface Import {
  id: string;
  format: 'csv' | 'jsonl' | 'rows';
  mode: 'store' | 'bypass';
  retention_class: 'import-30d' | 'import-90d' | 'bypass';
  status: 'created' | 'processing' | 'delivered' | 'delivery_failed' | 'invalid' | 'expired' | 'deleted';
  destination_host: string | null;
  required_columns: string[];
  identifiers?: IdentifierFields;
  created_at: string;
  updated_at: string;
  completed_at: string | null;
  bytes: number;
  sha256: string | null;
  rows_total: number;
  rows_valid: number;
  rows_invalid: number;
  rows_delivered: number;
  /** Valid rows not pushed: the subject's processing is restricted. */
  rows_restricted?: number;
  /** Valid rows not pushed: the subject withdrew consent for `purpose`. */
  rows_consent_withdrawn?: number;
  /** The declared purpose the rows are pushed for. */
  purpose?: string | null;
  batches_delivered: number;
  errors: LineError[];
  error: string | null;
  data_expires_at: number | null;
  data_deleted_at: string | null;
}
/** "2 restricted, 1 consent withdrawn": valid rows custody did not push, or '' for none. */
export function leftOut(i: Import): string {
  const parts: string[] = [];
  if (i.rows_restricted) parts.push(`${i.rows_restricted} restricted`);
  if (i.rows_consent_withdrawn) parts.push(`${i.rows_consent_withdrawn} consent withdrawn`);
  return parts.join(', ');
}

export interface PresignedUpload {
  method: string;
  url: string;
  headers: Record<string, string>;
  expires_at: string;
}
export interface ImportsDeleted {
  imports: number;
  deleted: { object_versions: number; index_entries: number };
}

export type PrivacyKind = 'access' | 'erasure' | 'restrict' | 'rectify';
export const RESTRICTION_GROUNDS = ['accuracy_contested', 'unlawful_processing', 'legal_claims', 'objection'] as const;
export type RestrictionGround = (typeof RESTRICTION_GROUNDS)[number];
export interface Restriction {
  ground: RestrictionGround;
  since: string;
  lifted_at?: string | null;
  lifted_by?: string | null;
  lift_reason?: string | null;
}
export type PrivacyStatus = 'received' | 'identity_unverified' | 'pending' | 'in_processing' | 'complete' | 'denied' | 'error';
export interface PrivacyRequestSummary {
  id: string;
  kind: PrivacyKind;
  regulation: 'gdpr' | 'ccpa';
  status: PrivacyStatus;
  received_at: string;
  due_at: string;
  respond_by: string;
  days_left: number;
  overdue: boolean;
  extended: boolean;
  ack_due?: string;
  initial_response_due?: string | null;
  initial_response_overdue?: boolean;
  /** A restrict request's restriction (listed while in force). */
  restriction?: Restriction | null;
}
export interface PrivacyRequestCreated {
  id: string;
  kind: PrivacyKind;
  status: PrivacyStatus;
  regulation: 'gdpr' | 'ccpa';
  received_at: string;
  ack_due: string;
  due_at: string;
  product_due_at: string;
  respond_by: string;
  verification: null | { required: true; code_delivered: boolean };
}
export interface PrivacyRequestDetail {
  id: string;
  kind: PrivacyKind;
  regulation: 'gdpr' | 'ccpa';
  status: PrivacyStatus;
  deadlines: { received_at: string; ack_due: string; due_at: string; product_due_at: string; initial_response_due?: string };
  initial_response_at?: string | null;
  initial_response_overdue?: boolean;
  restriction?: Restriction | null;
  respond_by: string;
  days_left: number;
  acknowledged_at: string;
  acknowledged_in_time: boolean;
  extension: null | { length: { months: number } | { days: number }; extended_at: string; previous_due_at: string };
  free_of_charge: boolean;
  steps_done: string[];
  erased: null | Record<string, number>;
  /** Which identifier kinds were corrected, and counts; never the values. */
  rectification?: null | ({ corrected: string[] } & Record<string, number | string[]>);
  certificate_available: boolean;
  denial_reason: string | null;
  completed_at: string | null;
  download: null | { url: string; expires_at: string; sha256: string; bytes: number };
  /** The tenant's notices about this request, with their delivery per channel. */
  notices?: {
    event_id: string;
    type: string;
    status: string;
    attempts: number;
    delivered_at: string | null;
    channels?: { channel: string; status: string; attempts: number; delivered_at: string | null }[];
  }[];
}
export interface CertificateResponse {
  certificate: {
    schema: string;
    certificate_id: string;
    scope: 'subject' | 'account';
    tenant: string;
    request_id: string;
    regulation?: string;
    subject_pseudonyms: string[];
    received_at: string;
    erased_at: string;
    issued_at: string;
    erased: { store: string; unit: string; count: number }[];
    audit_entries: { seq: number; action: string; hash: string }[];
    audit_head_hash: string;
    key_id: string;
    algorithm: string;
  };
  document: string;
  signature: string;
  key_id: string;
  algorithm: string;
  public_key: string;
}
export interface PublicKey {
  key_id: string;
  algorithm: string;
  key_spec: string;
  der_base64: string;
  pem: string;
}
export interface ConsentChange {
  state: 'granted' | 'withdrawn';
  at: string;
  source: string;
  policy_version: string;
  recorded_by: string;
}
export interface PrivacySettings {
  time_zone: string;
  verification_webhook: null | { url: string };
  purposes?: string[];
  /** Where privacy notices go; absent from APIs that do not have it yet. */
  notification_webhook?: null | { url: string };
  /** Where notices are e-mailed too, where the deployment sends e-mail (`notification_email_enabled`). */
  notification_email?: string | null;
  notification_email_enabled?: boolean;
}
export interface RetentionTable {
  tenant: string;
  classes: {
    name: string;
    period: { value: number; unit: 'minutes' | 'days'; at_least: boolean; expires_automatically: boolean };
    store: string;
    promise: string;
    mechanism: string;
  }[];
  imports: { classes: string[]; default_class: string };
  noncurrent_version_days: number;
  abort_incomplete_multipart_days: number;
}

export type AuditClass = 'evidence' | 'activity';
export interface AuditEntry {
  seq: number;
  at: string;
  segment?: string;
  actor: string;
  action: string;
  target: string;
  /** The data subject as a pseudonym (`ps_…`), if any. */
  subject?: string | null;
  outcome: 'success' | 'failure' | 'denied' | string;
  /** Non-personal details; the API sends them as JSON text (hashed as stored). */
  details: string | Record<string, unknown>;
  prev_hash: string;
  hash: string;
}
export interface AuditPage {
  class: AuditClass;
  entries: AuditEntry[];
  next_before?: number | null;
}
export interface VerifiedChain {
  class: AuditClass | string;
  entries: number;
  head_seq: number;
  head_hash: string;
  checkpoints: number;
  from_checkpoint: string | null;
}
export interface AuditVerification {
  verified: boolean;
  chains?: VerifiedChain[];
  broken?: { class: string; cause: string };
  latest_checkpoints: Record<string, { seq: number; document: string; signature: string } | null>;
}

export interface DestinationTestResult {
  ok: boolean;
  destination: 'webdav' | 's3';
  probe?: string;
  probe_removed?: boolean;
  error?: string;
}

/** `POST /import-sessions`: a short-lived token for an embedded <custody-importer>. */
export interface ImportSession {
  id: string;
  origin: string | null;
  destination_host: string;
  created_at: string;
  expires_at: string;
}
export interface ImportSessionCreated {
  session: ImportSession;
  /** `cis_…`, shown once. */
  token: string;
  /** Only when custody generated the destination's signing secret. */
  destination_secret?: string;
}
