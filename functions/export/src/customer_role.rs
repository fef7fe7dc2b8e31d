//! Customers' S3 buckets are written only through the customer's own IAM role,
//! assumed with the tenant id as `ExternalId`. The export function's own role may
//! write no customer bucket, so a tenant that names another customer's bucket (or
//! role) gets nothing: the other customer's trust policy requires *their* tenant id,
//! which custody never sends on anyone else's behalf (the confused-deputy rule).

use aws_sdk_s3::Client as S3Client;
use aws_sdk_s3::config::{Credentials, SharedCredentialsProvider};
use aws_sdk_sts::error::ProvideErrorMetadata;
use custody::TenantId;
use custody::http::{HttpAnswer, HttpError, ProblemKind};
use http::StatusCode;

/// How long the assumed credentials last: longer than a run (Lambda's 15 minutes),
/// and STS's minimum.
const SESSION_SECONDS: i32 = 900;

#[derive(Debug, thiserror::Error)]
pub enum CustomerRoleError {
    /// 422 `destination.role_arn`: the role does not trust this tenant (or custody).
    #[error(
        "the role cannot be assumed with this tenant's id as ExternalId (its trust policy must allow custody's export role with sts:ExternalId = your tenant id)"
    )]
    Refused,
    /// 503: STS did not answer; try again.
    #[error("the security token service is unavailable")]
    Unavailable(String),
    /// 500: deployed without an SDK configuration.
    #[error("no SDK configuration to assume the customer's role with")]
    NoSdk,
    /// 400 `destination.role_arn`: stored settings from before roles were required.
    #[error(
        "an S3 destination needs role_arn: custody writes customer buckets only through the customer's role"
    )]
    NoRole,
}

impl HttpError for CustomerRoleError {
    fn answer(&self) -> HttpAnswer<'_> {
        match self {
            Self::Refused => HttpAnswer::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                ProblemKind::new("destination-refused", "Destination refused"),
                self.to_string(),
            )
            .with_field("destination.role_arn"),
            Self::NoRole => HttpAnswer::bad_request("destination.role_arn", self.to_string()),
            Self::Unavailable(_) => HttpAnswer::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ProblemKind::new("unavailable", "Service unavailable"),
                "the security token service did not answer; try again",
            ),
            Self::NoSdk => HttpAnswer::internal_logged("customer role", self),
        }
    }
}

/// An S3 client with the customer's role, assumed now (so a refusal surfaces here,
/// not halfway through a run) with `ExternalId` = `tenant`.
pub async fn s3_client(
    sdk: Option<&aws_config::SdkConfig>,
    tenant: &TenantId,
    role_arn: Option<&str>,
) -> Result<S3Client, CustomerRoleError> {
    let role_arn = role_arn.ok_or(CustomerRoleError::NoRole)?;
    let sdk = sdk.ok_or(CustomerRoleError::NoSdk)?;
    let sts = aws_sdk_sts::Client::new(sdk);
    let out = sts
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(format!("custody-export-{tenant}"))
        .external_id(tenant.as_str())
        .duration_seconds(SESSION_SECONDS)
        .send()
        .await
        .map_err(|e| match e.code() {
            Some("AccessDenied" | "AccessDeniedException" | "MalformedPolicyDocument") => {
                CustomerRoleError::Refused
            }
            _ if e.as_service_error().is_some() => CustomerRoleError::Refused,
            _ => CustomerRoleError::Unavailable(e.to_string()),
        })?;
    let credentials = out.credentials().ok_or(CustomerRoleError::Refused)?;
    let expiry = std::time::SystemTime::try_from(*credentials.expiration()).ok();
    let credentials = Credentials::new(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(credentials.session_token().to_owned()),
        expiry,
        "custody-customer-role",
    );
    let assumed = sdk
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .build();
    Ok(custody::aws::s3_client(&assumed))
}
