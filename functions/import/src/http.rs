//! The imports API. Roles: operators create imports and post rows; viewers read the
//! log and download; admins delete. Every key starts with the caller's tenant.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::ServerSideEncryption;
use chrono::{DateTime, Utc};
use custody::api::{
    Caller, Problem, Role, caller, json_body, json_response, path_param, route_key,
};
use custody::audit::Event;
use custody::idempotency::RunError;
use custody::import_session::{self, ImportSession, SessionView};
use custody::imports::{
    Format, IdentifierFields, Import, ImportError, Imports, LeftOut, LineError,
    MAX_RECORDED_ERRORS, MAX_ROW_BYTES, MAX_UPLOAD_BYTES, Mode, ObjectKey, Purged, RowFilter,
    Status, SubjectCounter, is_column_name, new_import_id, rows_batch_key,
};
use custody::metrics::{self, names};
use custody::retention::RetentionClass;
use custody::seal::{Purpose, SealContext};
use custody::store::keys;
use custody::webhook::{self, MAX_BATCH_ROWS};
use http::StatusCode;
use lambda_http::{Body, Request, RequestExt, Response};
use rand::Rng as _;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Deps;
use crate::process::{self, ProcessError};

/// Largest `POST /imports` body.
pub const MAX_CREATE_BODY_BYTES: usize = 16 * 1024;
/// Largest `POST /imports/{id}/rows` body.
pub const MAX_ROWS_BODY_BYTES: usize = 1024 * 1024;
/// How long a presigned upload URL is valid.
pub const UPLOAD_URL_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a presigned download URL is valid.
pub const DOWNLOAD_URL_TTL: Duration = Duration::from_secs(5 * 60);
/// Most required columns an import may name.
pub const MAX_REQUIRED_COLUMNS: usize = 32;
/// Header carrying a client's idempotency key for row batches.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Longest idempotency key (visible ASCII, so bytes are characters).
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
/// Largest page of `GET /imports`.
pub const MAX_LIST_PAGE: i32 = 100;

/// Serves one request; every error becomes a problem response.
pub async fn handle(deps: &Deps, req: Request) -> Response<Body> {
    match route(deps, &req).await {
        Ok(response) => response,
        Err(problem) => problem.into_response(),
    }
}

async fn route(deps: &Deps, req: &Request) -> Result<Response<Body>, Problem> {
    let route = route_key(req);
    // The embedded importer's routes carry an import-session token, not a login: API
    // Gateway leaves them unauthenticated and the session is checked here.
    if let Some(key) = route.as_deref().filter(|key| {
        key.split_once(' ')
            .is_some_and(|(_, path)| path.starts_with(EMBED_PATH_PREFIX))
    }) {
        return embed(deps, req, key).await;
    }
    let caller = caller(req)?;
    // Writers refuse a tenant whose account deletion has started.
    if matches!(
        route.as_deref(),
        Some(
            "POST /imports"
                | "POST /imports/{id}/rows"
                | "POST /imports/{id}/complete"
                | "POST /imports/{id}/retry"
                | "POST /import-sessions"
        )
    ) {
        custody::privacy::ensure_open(deps.imports.store(), &caller.tenant).await?;
    }
    match route.as_deref() {
        Some("POST /imports") => create(deps, &caller, None, req).await,
        Some("GET /imports") => list(deps, &caller, req).await,
        Some("GET /imports/{id}") => get(deps, &caller, None, req).await,
        Some("POST /imports/{id}/rows") => post_rows(deps, &caller, None, req).await,
        Some("POST /imports/{id}/complete") => complete(deps, &caller, None, req).await,
        Some("POST /imports/{id}/retry") => retry(deps, &caller, req).await,
        Some("GET /imports/{id}/download") => download(deps, &caller, req).await,
        Some("DELETE /imports/{id}") => delete_one(deps, &caller, req).await,
        Some("DELETE /imports") => delete_all(deps, &caller).await,
        Some("POST /import-sessions") => mint_session(deps, &caller, req).await,
        Some("DELETE /import-sessions/{id}") => revoke_session(deps, &caller, req).await,
        _ => Err(Problem::not_found()),
    }
}

/// An embedded importer's request: the session's token instead of a login, and only
/// the routes that create an import and follow it.
async fn embed(deps: &Deps, req: &Request, route: &str) -> Result<Response<Body>, Problem> {
    let Some((method, path)) = route.split_once(' ') else {
        return Err(Problem::not_found());
    };
    let Some(inner) = path.strip_prefix(EMBED_PATH_PREFIX.trim_end_matches('/')) else {
        return Err(Problem::not_found());
    };
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
    };
    let session = import_session::authenticate(
        deps.imports.store(),
        header(http::header::AUTHORIZATION),
        header(http::header::ORIGIN),
    )
    .await?;
    // The session acts as an operator of its tenant, on the routes below only.
    let caller = Caller {
        tenant: session.tenant.clone(),
        role: Role::Operator,
        subject: session.actor(),
    };
    if method == "POST" {
        custody::privacy::ensure_open(deps.imports.store(), &caller.tenant).await?;
    }
    match (method, inner) {
        ("POST", "/imports") => create(deps, &caller, Some(&session), req).await,
        ("GET", "/imports/{id}") => get(deps, &caller, Some(&session), req).await,
        ("POST", "/imports/{id}/rows") => post_rows(deps, &caller, Some(&session), req).await,
        ("POST", "/imports/{id}/complete") => complete(deps, &caller, Some(&session), req).await,
        _ => Err(Problem::not_found()),
    }
}

/// The path prefix of the embedded importer's routes: `POST /embed/imports` is served
/// as `POST /imports` for the session's tenant.
pub const EMBED_PATH_PREFIX: &str = "/embed/";

/// The import log entry as the API shows it: no secret, and only the destination's
/// host (a URL's path or query may carry a customer's token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportView {
    pub id: String,
    pub format: Format,
    pub mode: Mode,
    pub retention_class: RetentionClass,
    pub status: Status,
    pub destination_host: Option<String>,
    pub required_columns: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identifiers: Option<IdentifierFields>,
    /// The declared purpose the rows are pushed for.
    #[serde(default)]
    pub purpose: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub bytes: u64,
    pub sha256: Option<String>,
    pub rows_total: u64,
    pub rows_valid: u64,
    pub rows_invalid: u64,
    pub rows_delivered: u64,
    /// Valid rows not pushed: their subject's processing is restricted.
    #[serde(default)]
    pub rows_restricted: u64,
    /// Valid rows not pushed: their subject withdrew consent for `purpose`.
    #[serde(default)]
    pub rows_consent_withdrawn: u64,
    pub batches_delivered: u64,
    pub errors: Vec<LineError>,
    pub error: Option<String>,
    pub data_expires_at: Option<i64>,
    pub data_deleted_at: Option<DateTime<Utc>>,
}

impl From<&Import> for ImportView {
    fn from(import: &Import) -> Self {
        Self {
            id: import.id.clone(),
            format: import.format,
            mode: import.mode,
            retention_class: import.retention_class,
            status: import.status,
            destination_host: url::Url::parse(&import.destination_url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned)),
            required_columns: import.required_columns.clone(),
            identifiers: import.identifier_fields.clone(),
            purpose: import.purpose.clone(),
            created_at: import.created_at,
            updated_at: import.updated_at,
            completed_at: import.completed_at,
            bytes: import.bytes,
            sha256: import.sha256.clone(),
            rows_total: import.rows_total,
            rows_valid: import.rows_valid,
            rows_invalid: import.rows_invalid,
            rows_delivered: import.rows_delivered,
            rows_restricted: import.rows_restricted,
            rows_consent_withdrawn: import.rows_consent_withdrawn,
            batches_delivered: import.batches_delivered,
            errors: import.errors.clone(),
            error: import.error.clone(),
            data_expires_at: import.data_expires_at,
            data_deleted_at: import.data_deleted_at,
        }
    }
}

// ---------------------------------------------------------------------------------
// POST /imports

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateImport {
    format: Format,
    #[serde(default = "default_mode")]
    mode: Mode,
    #[serde(default)]
    retention_class: Option<RetentionClass>,
    /// Required, except on the embedded routes, where the session fixes it.
    #[serde(default)]
    destination: Option<DestinationInput>,
    /// File imports: the exact size of the file to upload, in bytes.
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    required_columns: Vec<String>,
    #[serde(default)]
    default_country_code: Option<String>,
    /// Where rows carry subject identifiers beyond the default column names.
    #[serde(default)]
    identifiers: Option<IdentifierFields>,
    /// The declared purpose the rows are pushed for: subjects who withdrew consent
    /// for it are left out (restricted subjects are, whatever the purpose).
    #[serde(default)]
    purpose: Option<String>,
}

fn default_mode() -> Mode {
    Mode::Store
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DestinationInput {
    url: String,
    /// The webhook signing secret; generated (and returned once) when absent.
    #[serde(default)]
    secret: Option<SecretString>,
}

/// A presigned request the client makes as given: these headers are signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresignedUpload {
    pub method: String,
    pub url: String,
    pub headers: BTreeMap<String, String>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Created {
    pub import: ImportView,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<PresignedUpload>,
    /// Only when custody generated the secret; shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_secret: Option<String>,
}

async fn create(
    deps: &Deps,
    caller: &Caller,
    session: Option<&ImportSession>,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let input: CreateImport = json_body(req, MAX_CREATE_BODY_BYTES)?;
    let destination = match (&input.destination, session) {
        (Some(_), Some(_)) => {
            return Err(Problem::bad_request(
                "destination",
                "the import session fixes the destination; leave destination out",
            ));
        }
        (None, None) => {
            return Err(Problem::bad_request(
                "destination",
                "destination is required",
            ));
        }
        (Some(input), None) => Some(input),
        (None, Some(_)) => None,
    };
    // Bypass has its own class: its tag selects the 1-day lifecycle backstop, so an
    // upload whose processing never ends is still gone within a day.
    let class = match (input.mode, input.retention_class) {
        (Mode::Bypass, None | Some(RetentionClass::Bypass)) => RetentionClass::Bypass,
        (Mode::Bypass, Some(_)) => {
            return Err(Problem::bad_request(
                "retention_class",
                "bypass imports keep nothing; retention_class must be bypass or absent",
            ));
        }
        (Mode::Store, requested) => requested.unwrap_or_else(RetentionClass::default_import_class),
    };
    if input.mode == Mode::Store && !RetentionClass::import_classes().contains(&class) {
        return Err(Problem::bad_request(
            "retention_class",
            "retention_class must be import-30d or import-90d",
        ));
    }
    let (url, secret, generated) = match (destination, session) {
        (Some(destination), _) => {
            let (url, secret, generated) = destination_of(deps, destination)?;
            (url.to_string(), secret, generated)
        }
        (None, Some(session)) => {
            let secret = deps
                .sealer
                .open(
                    &import_session::session_seal_context(&session.tenant, &session.id),
                    &session.destination_secret,
                )
                .await?;
            (session.destination_url.clone(), secret, false)
        }
        (None, None) => {
            return Err(Problem::bad_request(
                "destination",
                "destination is required",
            ));
        }
    };
    match (input.format, input.size) {
        (Format::Rows, Some(_)) => {
            return Err(Problem::bad_request(
                "size",
                "size applies to file imports only",
            ));
        }
        (Format::Csv | Format::Jsonl, None) => {
            return Err(Problem::bad_request(
                "size",
                "file imports must state the file's size in bytes",
            ));
        }
        (Format::Csv | Format::Jsonl, Some(size)) if size == 0 || size > MAX_UPLOAD_BYTES => {
            return Err(Problem::bad_request(
                "size",
                format!("size must be between 1 and {MAX_UPLOAD_BYTES} bytes"),
            ));
        }
        _ => {}
    }
    if input.required_columns.len() > MAX_REQUIRED_COLUMNS {
        return Err(Problem::bad_request(
            "required_columns",
            format!("at most {MAX_REQUIRED_COLUMNS} required columns"),
        ));
    }
    if let Some(index) = input
        .required_columns
        .iter()
        .position(|c| !is_column_name(c))
    {
        return Err(Problem::bad_request(
            format!("required_columns[{index}]"),
            "not a valid column name",
        ));
    }
    let required_columns: Vec<String> = input
        .required_columns
        .iter()
        .map(|c| c.trim().to_owned())
        .collect();
    if let Some(cc) = &input.default_country_code {
        let digits = cc.trim_start_matches('+');
        if digits.is_empty()
            || digits.len() > 3
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(Problem::bad_request(
                "default_country_code",
                "must be a country calling code of 1 to 3 digits",
            ));
        }
    }

    if let Some(identifiers) = &input.identifiers {
        identifiers.validate().map_err(|(place, rule)| {
            let field = if place.is_empty() {
                "identifiers".to_owned()
            } else {
                format!("identifiers.{place}")
            };
            Problem::bad_request(field, rule)
        })?;
        // CSV rows are flat: a pointer into them can only name a column.
        if input.format == Format::Csv
            && let Some((_, place, _)) = identifiers
                .fields()
                .find(|(_, _, f)| f.starts_with('/') && f[1..].contains('/'))
        {
            return Err(Problem::bad_request(
                format!("identifiers.{place}"),
                "CSV rows are flat: name a column, or a pointer of one segment",
            ));
        }
    }

    let purpose = match input.purpose {
        None => None,
        Some(purpose) => Some(declared_purpose(deps, &caller.tenant, purpose).await?),
    };

    let actor = session.map_or_else(|| caller.actor(), ImportSession::actor);
    let id = new_import_id();
    let sealed = deps
        .sealer
        .seal(
            &SealContext::new(&caller.tenant, Purpose::WebhookSecret, keys::import(&id)),
            &secret,
        )
        .await?;
    let now = deps.clock.now();
    let import = Import {
        tenant: caller.tenant.clone(),
        id: id.clone(),
        format: input.format,
        mode: input.mode,
        retention_class: class,
        status: Status::Created,
        destination_url: url,
        destination_secret: sealed,
        required_columns,
        default_country_code: input
            .default_country_code
            .map(|cc| cc.trim_start_matches('+').to_owned()),
        identifier_fields: input.identifiers.filter(|i| i.fields().next().is_some()),
        declared_bytes: input.size,
        purpose,
        created_by: actor.clone(),
        created_at: now,
        updated_at: now,
        completed_at: None,
        bytes: 0,
        sha256: None,
        rows_total: 0,
        rows_valid: 0,
        rows_invalid: 0,
        rows_delivered: 0,
        rows_restricted: 0,
        rows_consent_withdrawn: 0,
        batches_delivered: 0,
        row_batches: 0,
        errors: Vec::new(),
        error: None,
        data_expires_at: None,
        data_deleted_at: None,
        processed_version: None,
        final_audited: false,
        retries: 0,
        revision: 0,
    };
    deps.imports.create(&import).await?;
    let upload = match (import.upload_key(), input.size) {
        (Some(key), Some(size)) => Some(presign_upload(deps, &import, &key, size).await?),
        _ => None,
    };
    let mut created = Event::new(actor, "import.created", keys::import(&id))
        .detail("format", format_name(import.format))
        .detail("mode", process::mode_name(import.mode))
        .detail("retention_class", class.name());
    if let Some(purpose) = &import.purpose {
        created = created.detail("purpose", purpose.clone());
    }
    process::audit(deps, &import, created).await?;
    let body = Created {
        import: ImportView::from(&import),
        upload,
        destination_secret: generated.then(|| secret.expose_secret().to_owned()),
    };
    json_response(StatusCode::CREATED, &body)
}

/// A purpose an import may name: well-formed, and one the tenant declared.
async fn declared_purpose(
    deps: &Deps,
    tenant: &custody::TenantId,
    purpose: String,
) -> Result<String, Problem> {
    if custody::privacy::validate_purpose(&purpose).is_err() {
        return Err(Problem::bad_request(
            "purpose",
            format!(
                "purpose must be 1-{} characters of a-z, 0-9, '_' or '-'",
                custody::privacy::MAX_PURPOSE_LEN
            ),
        ));
    }
    let declared = custody::privacy::declared_purposes(deps.imports.store(), tenant).await?;
    if declared.contains(&purpose) {
        return Ok(purpose);
    }
    let detail = if declared.is_empty() {
        "purpose must be one of the tenant's declared purposes, and none are declared; declare them with PUT /privacy/settings".to_owned()
    } else {
        format!(
            "purpose must be one of the tenant's declared purposes: {}",
            declared.join(", ")
        )
    };
    Err(Problem::bad_request("purpose", detail))
}

fn format_name(format: Format) -> &'static str {
    match format {
        Format::Csv => "csv",
        Format::Jsonl => "jsonl",
        Format::Rows => "rows",
    }
}

/// A presigned PUT bound to the key, the exact size, the content type, SSE-KMS with
/// the data key, and the retention tag (all signed headers: a request without them,
/// or with other values, does not match the signature).
async fn presign_upload(
    deps: &Deps,
    import: &Import,
    key: &str,
    size: u64,
) -> Result<PresignedUpload, Problem> {
    let config = PresigningConfig::expires_in(UPLOAD_URL_TTL).map_err(internal)?;
    let size = i64::try_from(size).map_err(internal)?;
    let presigned = deps
        .imports
        .s3()
        .put_object()
        .bucket(deps.imports.bucket())
        .key(key)
        .content_type(import.format.content_type())
        .content_length(size)
        .server_side_encryption(ServerSideEncryption::AwsKms)
        .ssekms_key_id(&deps.config.data_key_id)
        .tagging(Imports::tagging_header(import.retention_class))
        .presigned(config)
        .await
        .map_err(internal)?;
    Ok(PresignedUpload {
        method: presigned.method().to_owned(),
        url: presigned.uri().to_owned(),
        headers: presigned
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect(),
        expires_at: deps.clock.now()
            + chrono::Duration::from_std(UPLOAD_URL_TTL).unwrap_or_default(),
    })
}

fn internal<E: std::fmt::Display>(err: E) -> Problem {
    tracing::error!(error = %err, "presigning failed");
    Problem::internal()
}

// ---------------------------------------------------------------------------------
// GET /imports, GET /imports/{id}

#[derive(Debug, Serialize, Deserialize)]
pub struct Listing {
    pub imports: Vec<ImportView>,
    pub next_cursor: Option<String>,
}

async fn list(deps: &Deps, caller: &Caller, req: &Request) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let params = req.query_string_parameters_ref();
    let limit = match params.and_then(|p| p.first("limit")) {
        None => None,
        Some(raw) => match raw.parse::<i32>() {
            Ok(n) if (1..=MAX_LIST_PAGE).contains(&n) => Some(n),
            _ => {
                return Err(Problem::bad_request(
                    "limit",
                    format!("limit must be a number from 1 to {MAX_LIST_PAGE}"),
                ));
            }
        },
    };
    let cursor = params.and_then(|p| p.first("cursor")).map(str::to_owned);
    let page = deps.imports.list(&caller.tenant, limit, cursor).await?;
    json_response(
        StatusCode::OK,
        &Listing {
            imports: page.items.iter().map(ImportView::from).collect(),
            next_cursor: page.next_cursor,
        },
    )
}

/// The caller's import named by the path, as readers see it (`expired` once past its
/// retention), or 404 (also for another tenant's id).
async fn owned(
    deps: &Deps,
    caller: &Caller,
    session: Option<&ImportSession>,
    req: &Request,
) -> Result<Import, Problem> {
    let id = path_param(req, "id")?;
    let import = deps
        .imports
        .read(&caller.tenant, &id)
        .await?
        .ok_or_else(Problem::not_found)?;
    custody::api::ensure_owned(caller, &import.tenant)?;
    // A session sees only the imports it created.
    if let Some(session) = session
        && import.created_by != session.actor()
    {
        return Err(Problem::not_found());
    }
    Ok(import)
}

/// 410 for anything that would read an import's data past its retention, though S3
/// lifecycle and TTL delete it days later: the promise is the number, not the
/// platform's delay.
fn refuse_if_past_retention(import: &Import, action: &str) -> Result<(), Problem> {
    if import.status != Status::Expired {
        return Ok(());
    }
    let when = import
        .data_expires_at
        .and_then(|at| chrono::DateTime::from_timestamp(at, 0))
        .map(|at| format!(" on {}", at.format("%Y-%m-%d %H:%M UTC")))
        .unwrap_or_default();
    Err(Problem::gone(format!(
        "this import's data passed its retention ({}){when} and is deleted; it cannot be {action}",
        import.retention_class.name()
    )))
}

async fn get(
    deps: &Deps,
    caller: &Caller,
    session: Option<&ImportSession>,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Viewer)?;
    let import = owned(deps, caller, session, req).await?;
    json_response(StatusCode::OK, &ImportView::from(&import))
}

// ---------------------------------------------------------------------------------
// POST /imports/{id}/rows

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowsAccepted {
    /// 1-based number of this batch within the import.
    pub batch: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub errors: Vec<LineError>,
}

async fn post_rows(
    deps: &Deps,
    caller: &Caller,
    session: Option<&ImportSession>,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let import = owned(deps, caller, session, req).await?;
    if import.format != Format::Rows {
        return Err(Problem::conflict(
            "only imports of format 'rows' accept row batches",
        ));
    }
    if import.status != Status::Created {
        return Err(ImportError::State(import.status).into());
    }
    let rows: Vec<Value> = json_body(req, MAX_ROWS_BODY_BYTES)?;
    if rows.len() > MAX_BATCH_ROWS {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-many-rows",
            "Too many rows",
            format!("a batch holds at most {MAX_BATCH_ROWS} rows"),
        )
        .with_field("body"));
    }
    if rows.is_empty() {
        return Err(Problem::bad_request(
            "body",
            "a batch needs at least one row",
        ));
    }
    let key = req
        .headers()
        .get(IDEMPOTENCY_KEY_HEADER)
        .map(|v| v.to_str().map(str::to_owned))
        .transpose()
        .map_err(|_| Problem::bad_request(IDEMPOTENCY_KEY_HEADER, "must be visible ASCII"))?;
    let accepted = match key {
        None => accept_rows(deps, &import, rows).await?,
        Some(key) => {
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
                return Err(Problem::bad_request(
                    IDEMPOTENCY_KEY_HEADER,
                    format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
                ));
            }
            let result = deps
                .idempotency
                .run(
                    &caller.tenant,
                    &format!("rows:{}:{key}", import.id),
                    &rows,
                    Duration::ZERO,
                    || accept_rows(deps, &import, rows.clone()),
                )
                .await;
            match result {
                Ok(outcome) => outcome.into_inner(),
                Err(RunError::Work(problem)) => return Err(problem),
                Err(RunError::Idempotency(err)) => return Err(err.into()),
            }
        }
    };
    json_response(StatusCode::OK, &accepted)
}

async fn accept_rows(
    deps: &Deps,
    import: &Import,
    rows: Vec<Value>,
) -> Result<RowsAccepted, Problem> {
    let tenant = &import.tenant;
    let seq = deps
        .imports
        .update(tenant, &import.id, |imp| {
            if imp.status != Status::Created {
                return Err(ImportError::State(imp.status));
            }
            imp.row_batches += 1;
            Ok(())
        })
        .await?
        .row_batches;
    let rules = import.rules();
    let total = rows.len() as u64;
    let mut valid: Vec<(Map<String, Value>, Vec<u8>)> = Vec::new();
    let mut subjects = Vec::new();
    let mut errors = Vec::new();
    let mut rejected = 0;
    for (index, value) in rows.into_iter().enumerate() {
        let reject = |message: String| LineError {
            batch: Some(seq),
            line: index as u64 + 1,
            message,
        };
        let row = match value {
            Value::Object(row) => row,
            _ => {
                rejected += 1;
                errors.push(reject("is not a JSON object".into()));
                continue;
            }
        };
        let json = serde_json::to_vec(&row).unwrap_or_default();
        if json.len() > MAX_ROW_BYTES {
            rejected += 1;
            errors.push(reject(format!("is longer than {MAX_ROW_BYTES} bytes")));
            continue;
        }
        match rules.check(&row) {
            Ok(found) => {
                subjects.push(found);
                valid.push((row, json));
            }
            Err(message) => {
                rejected += 1;
                errors.push(reject(message));
            }
        }
    }
    let accepted = valid.len() as u64;
    let mut delivered = None;
    let mut left_out = LeftOut::default();
    let mut expires_at = None;
    if !valid.is_empty() {
        match import.mode {
            Mode::Store => {
                let key = rows_batch_key(tenant, &import.id, seq);
                let mut body = Vec::new();
                for (_, json) in &valid {
                    body.extend_from_slice(json);
                    body.push(b'\n');
                }
                deps.imports
                    .s3()
                    .put_object()
                    .bucket(deps.imports.bucket())
                    .key(&key)
                    .content_type(Format::Rows.content_type())
                    .server_side_encryption(ServerSideEncryption::AwsKms)
                    .ssekms_key_id(&deps.config.data_key_id)
                    .tagging(Imports::tagging_header(import.retention_class))
                    .body(body.into())
                    .send()
                    .await
                    .map_err(|e| ImportError::S3(custody::aws::error_text(&e)))?;
                let expiry = import
                    .retention_class
                    .expires_at(deps.clock.now())
                    .unwrap_or_default();
                deps.imports
                    .record_data_expiry(tenant, &import.id, import.retention_class, expiry)
                    .await?;
                let object = ObjectKey::parse(&key).ok_or_else(Problem::internal)?;
                let pseudonyms = deps
                    .app_secret
                    .pseudonym_key(tenant)
                    .await
                    .map_err(ImportError::from)?;
                let mut counter = SubjectCounter::new(&deps.imports, &pseudonyms, object, expiry);
                for found in &subjects {
                    counter.add(found).await?;
                }
                counter.flush().await?;
                expires_at = Some(expiry);
            }
            Mode::Bypass => {
                // Nothing is stored: the batch goes to the destination now, or the
                // caller hears that it did not and sends it again. Suppressed subjects'
                // rows are left out, by one look at the list for the whole batch.
                let filter = RowFilter::load(
                    deps.imports.store(),
                    &deps.app_secret,
                    tenant,
                    import.purpose.as_deref(),
                )
                .await?;
                let mut rows: Vec<Map<String, Value>> = Vec::with_capacity(valid.len());
                for ((row, _), found) in valid.into_iter().zip(&subjects) {
                    match filter.reason(found) {
                        Some(reason) => left_out.add(reason),
                        None => rows.push(row),
                    }
                }
                let pushed = rows.len() as u64;
                // A batch whose every row is left out is not sent.
                if pushed > 0 {
                    let number = seq - 1;
                    let batch = webhook::Batch {
                        import_id: import.id.clone(),
                        batch: number,
                        rows,
                    };
                    let body = serde_json::to_vec(&batch).map_err(internal)?;
                    let url = webhook::destination_url(
                        &import.destination_url,
                        deps.settings.egress.allow_loopback,
                    )?;
                    let secret = deps
                        .sealer
                        .open(
                            &SealContext::new(
                                tenant,
                                Purpose::WebhookSecret,
                                keys::import(&import.id),
                            ),
                            &import.destination_secret,
                        )
                        .await?;
                    deps.sender
                        .deliver(
                            &url,
                            &secret,
                            &webhook::delivery_id(&import.id, number),
                            body.into(),
                        )
                        .await
                        .inspect_err(|_| metrics::count(names::IMPORT_ROWS_FAILED, pushed))?;
                    metrics::count(names::IMPORT_ROWS_DELIVERED, pushed);
                }
                delivered = Some(pushed);
            }
        }
    }
    let recorded = errors.clone();
    deps.imports
        .update(tenant, &import.id, |imp| {
            imp.rows_total += total;
            imp.rows_valid += accepted;
            imp.rows_invalid += rejected;
            for error in &recorded {
                if imp.errors.len() < MAX_RECORDED_ERRORS {
                    imp.errors.push(error.clone());
                }
            }
            if let Some(rows) = delivered {
                imp.rows_delivered += rows;
                imp.rows_restricted += left_out.restricted;
                imp.rows_consent_withdrawn += left_out.consent_withdrawn;
                imp.batches_delivered += 1;
            }
            if expires_at.is_some() {
                imp.data_expires_at = imp.data_expires_at.max(expires_at);
            }
            Ok(())
        })
        .await?;
    Ok(RowsAccepted {
        batch: seq,
        accepted,
        rejected,
        errors,
    })
}

// ---------------------------------------------------------------------------------
// POST /imports/{id}/complete, POST /imports/{id}/retry

async fn complete(
    deps: &Deps,
    caller: &Caller,
    session: Option<&ImportSession>,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let import = owned(deps, caller, session, req).await?;
    if import.format != Format::Rows {
        return Err(Problem::conflict(
            "file imports complete by themselves when the upload is processed",
        ));
    }
    refuse_if_past_retention(&import, "delivered")?;
    deps.imports
        .update(&import.tenant, &import.id, |imp| match imp.status {
            Status::Created | Status::Processing => {
                imp.status = Status::Processing;
                Ok(())
            }
            other => Err(ImportError::State(other)),
        })
        .await?;
    // In bypass mode every batch was pushed when it was posted.
    let objects = match import.mode {
        Mode::Bypass => Vec::new(),
        Mode::Store => stored_objects(deps, &import, "rows/").await?,
    };
    process::deliver(deps, &import.tenant, &import.id, objects).await?;
    respond_with(deps, &import).await
}

async fn retry(deps: &Deps, caller: &Caller, req: &Request) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let import = owned(deps, caller, None, req).await?;
    refuse_if_past_retention(&import, "delivered")?;
    if import.mode == Mode::Bypass {
        // Its data was deleted when processing ended: there is nothing to resume from.
        return Err(Problem::conflict(
            "a bypass import keeps no data to retry from; upload it again in a new import",
        ));
    }
    if import.status == Status::DeliveryFailed && !import.final_audited {
        // The previous attempt's end entry was not written (its call failed after
        // recording the end): write it before a new attempt begins, or it never is.
        process::redrive_end(deps, &import.tenant, &import.id).await?;
    }
    deps.imports
        .update(&import.tenant, &import.id, |imp| match imp.status {
            Status::DeliveryFailed => {
                imp.status = Status::Processing;
                // The next end gets its own audit entry.
                imp.final_audited = false;
                imp.retries = imp.retries.saturating_add(1);
                Ok(())
            }
            other => Err(ImportError::State(other)),
        })
        .await?;
    let objects = stored_objects(deps, &import, "").await?;
    process::deliver(deps, &import.tenant, &import.id, objects).await?;
    respond_with(deps, &import).await
}

/// The current objects of an import under `sub` (`""` for all), latest versions.
async fn stored_objects(
    deps: &Deps,
    import: &Import,
    sub: &str,
) -> Result<Vec<(String, Option<String>)>, ProcessError> {
    let prefix = format!("{}{sub}", import.prefix());
    Ok(deps
        .imports
        .current_objects(&prefix)
        .await?
        .into_iter()
        .map(|o| (o.key, o.version_id))
        .collect())
}

async fn respond_with(deps: &Deps, import: &Import) -> Result<Response<Body>, Problem> {
    let current = deps
        .imports
        .get(&import.tenant, &import.id)
        .await?
        .ok_or_else(Problem::not_found)?;
    json_response(StatusCode::OK, &ImportView::from(&current))
}

// ---------------------------------------------------------------------------------
// GET /imports/{id}/download

#[derive(Debug, Serialize, Deserialize)]
pub struct DownloadLink {
    /// The object's name within the import: `upload.csv`, `rows/00000001.jsonl`.
    pub name: String,
    pub bytes: i64,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Download {
    pub objects: Vec<DownloadLink>,
}

async fn download(deps: &Deps, caller: &Caller, req: &Request) -> Result<Response<Body>, Problem> {
    // Raw imported data: operators and admins; viewers read metadata only.
    caller.require(Role::Operator)?;
    let import = owned(deps, caller, None, req).await?;
    refuse_if_past_retention(&import, "downloaded")?;
    let now = deps.clock.now();
    let objects = if import.status.is_gone() || import.data_deleted_at.is_some() {
        Vec::new()
    } else {
        deps.imports.current_objects(&import.prefix()).await?
    };
    if objects.is_empty() {
        return Err(Problem::conflict(
            "this import holds no stored data (bypass mode, deleted, expired, or not uploaded yet)",
        ));
    }
    // A link never outlives the data's retention.
    let mut ttl = DOWNLOAD_URL_TTL;
    if let Some(left) = import
        .data_expires_at
        .and_then(|at| u64::try_from(at - now.timestamp()).ok())
    {
        ttl = ttl.min(std::time::Duration::from_secs(left.max(1)));
    }
    let expires_at = now + chrono::Duration::from_std(ttl).unwrap_or_default();
    let prefix = import.prefix();
    let mut links = Vec::with_capacity(objects.len());
    for object in &objects {
        let config = PresigningConfig::expires_in(ttl).map_err(internal)?;
        let presigned = deps
            .imports
            .s3()
            .get_object()
            .bucket(deps.imports.bucket())
            .key(&object.key)
            .presigned(config)
            .await
            .map_err(internal)?;
        links.push(DownloadLink {
            name: object
                .key
                .strip_prefix(&prefix)
                .unwrap_or(&object.key)
                .to_owned(),
            bytes: object.size,
            url: presigned.uri().to_owned(),
            expires_at,
        });
    }
    process::audit(
        deps,
        &import,
        Event::new(
            caller.actor(),
            "import.downloaded",
            keys::import(&import.id),
        )
        .detail("objects", links.len() as u64),
    )
    .await?;
    json_response(StatusCode::OK, &Download { objects: links })
}

// ---------------------------------------------------------------------------------
// DELETE /imports/{id}, DELETE /imports

#[derive(Debug, Serialize, Deserialize)]
pub struct Deleted {
    pub imports: u64,
    pub deleted: Purged,
}

async fn delete_one(
    deps: &Deps,
    caller: &Caller,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let import = owned(deps, caller, None, req).await?;
    let purged = delete_import(deps, caller, &import).await?;
    json_response(
        StatusCode::OK,
        &Deleted {
            imports: 1,
            deleted: purged,
        },
    )
}

async fn delete_import(deps: &Deps, caller: &Caller, import: &Import) -> Result<Purged, Problem> {
    let purged = deps.imports.purge(&import.tenant, &import.id).await?;
    let now = deps.clock.now();
    let import = deps
        .imports
        .update(&import.tenant, &import.id, |imp| {
            if imp.status != Status::Expired {
                imp.status = Status::Deleted;
            }
            imp.data_deleted_at.get_or_insert(now);
            imp.data_expires_at = None;
            Ok(())
        })
        .await?;
    process::audit(
        deps,
        &import,
        Event::new(caller.actor(), "import.deleted", keys::import(&import.id))
            .detail("object_versions", purged.object_versions)
            .detail("index_entries", purged.index_entries),
    )
    .await?;
    Ok(purged)
}

async fn delete_all(deps: &Deps, caller: &Caller) -> Result<Response<Body>, Problem> {
    caller.require(Role::Admin)?;
    let imports = deps.imports.all(&caller.tenant).await?;
    let mut total = Purged::default();
    for import in &imports {
        total += delete_import(deps, caller, import).await?;
    }
    // Anything under the tenant's prefix or index that no import item accounts for.
    let stray = Purged {
        object_versions: deps
            .imports
            .delete_versions(&custody::imports::tenant_prefix(&caller.tenant))
            .await?,
        index_entries: deps
            .imports
            .delete_refs(&caller.tenant, &custody::imports::all_refs_prefix())
            .await?,
    };
    total += stray;
    deps.audit
        .append(
            &caller.tenant,
            Event::new(
                caller.actor(),
                "import.deleted_all",
                custody::imports::tenant_prefix(&caller.tenant),
            )
            .detail("imports", imports.len() as u64)
            .detail("object_versions", total.object_versions)
            .detail("index_entries", total.index_entries),
        )
        .await?;
    json_response(
        StatusCode::OK,
        &Deleted {
            imports: imports.len() as u64,
            deleted: total,
        },
    )
}

// ---------------------------------------------------------------------------------
// POST /import-sessions, DELETE /import-sessions/{id}

/// Largest `POST /import-sessions` body.
pub const MAX_SESSION_BODY_BYTES: usize = 8 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MintSession {
    destination: DestinationInput,
    #[serde(default)]
    origin: Option<String>,
    #[serde(default)]
    lifetime_minutes: Option<i64>,
}

/// A minted session: the token is shown this once.
#[derive(Debug, Serialize, Deserialize)]
pub struct Minted {
    pub session: SessionView,
    pub token: String,
    /// Only when custody generated the destination's secret; shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_secret: Option<String>,
}

/// A destination as asked for: its URL past the egress guard, its secret checked or
/// generated (true when generated).
fn destination_of(
    deps: &Deps,
    input: &DestinationInput,
) -> Result<(url::Url, SecretString, bool), Problem> {
    let url = webhook::destination_url(&input.url, deps.settings.egress.allow_loopback)?;
    match &input.secret {
        Some(secret) => {
            webhook::check_secret(secret)?;
            Ok((url, secret.clone(), false))
        }
        None => {
            let bytes: [u8; 32] = rand::rng().random();
            Ok((url, SecretString::from(hex::encode(bytes)), true))
        }
    }
}

async fn mint_session(
    deps: &Deps,
    caller: &Caller,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let input: MintSession = json_body(req, MAX_SESSION_BODY_BYTES)?;
    let (url, secret, generated) = destination_of(deps, &input.destination)?;
    let origin = input
        .origin
        .as_deref()
        .map(import_session::origin)
        .transpose()?;
    let lifetime = import_session::lifetime(input.lifetime_minutes)?;
    let (id, token) = import_session::new_token();
    // Whole seconds, as the TTL keeps it, so the lifetime shown is the one asked for.
    let now = chrono::SubsecRound::trunc_subsecs(deps.clock.now(), 0);
    let session = ImportSession {
        id: id.clone(),
        tenant: caller.tenant.clone(),
        token_hash: import_session::token_hash(token.expose_secret()),
        origin,
        destination_url: url.to_string(),
        destination_secret: deps
            .sealer
            .seal(
                &import_session::session_seal_context(&caller.tenant, &id),
                &secret,
            )
            .await?,
        created_by: caller.actor(),
        created_at: now,
        expires_at: (now + lifetime).timestamp(),
    };
    deps.imports.store().create(&session).await?;
    let view = SessionView::from(&session);
    deps.audit
        .append(
            &caller.tenant,
            Event::new(
                caller.actor(),
                "import_session.created",
                format!("{}{id}", import_session::KEY_PREFIX),
            )
            .detail("origin", view.origin.clone().unwrap_or_default())
            .detail("destination_host", view.destination_host.clone())
            .detail("expires_at", view.expires_at.to_rfc3339()),
        )
        .await?;
    json_response(
        StatusCode::CREATED,
        &Minted {
            session: view,
            token: import_session::reveal(&token),
            destination_secret: generated.then(|| secret.expose_secret().to_owned()),
        },
    )
}

/// Revokes at once. 404 when there is no such session of the tenant (never made,
/// expired, already revoked, or another tenant's: all look alike).
async fn revoke_session(
    deps: &Deps,
    caller: &Caller,
    req: &Request,
) -> Result<Response<Body>, Problem> {
    caller.require(Role::Operator)?;
    let id = path_param(req, "id")?;
    if !import_session::revoke(deps.imports.store(), &caller.tenant, &id).await? {
        return Err(Problem::not_found());
    }
    {
        deps.audit
            .append(
                &caller.tenant,
                Event::new(
                    caller.actor(),
                    "import_session.revoked",
                    format!("{}{id}", import_session::KEY_PREFIX),
                ),
            )
            .await?;
    }
    let mut response = Response::new(Body::Empty);
    *response.status_mut() = StatusCode::NO_CONTENT;
    Ok(response)
}
