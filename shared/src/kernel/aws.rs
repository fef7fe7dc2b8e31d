//! The one place that loads the AWS SDK configuration and builds the clients.
//!
//! In Lambda the defaults apply (role credentials, `AWS_REGION`). Locally the same
//! code talks to the emulator: the SDK honours `AWS_ENDPOINT_URL`, and
//! [`sdk_config_for_endpoint`] builds an explicit config for tests, which must not
//! share process-wide environment variables while running in parallel.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

use crate::kernel::faults::FaultPlan;
use crate::kernel::metrics::AwsCallMetrics;

/// Loads the SDK config from the environment (honours `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// An SDK config for an AWS-compatible endpoint (the local emulator), with a fixed
/// region and dummy static credentials.
pub fn sdk_config_for_endpoint(endpoint: &str, region: &str) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            Credentials::new("testing", "testing", None, None, "custody-local"),
        ))
        // What `aws_config::defaults` would add: credential providers built from this
        // config (e.g. assuming a role) need a clock and a sleep.
        .time_source(aws_smithy_async::time::SharedTimeSource::new(
            aws_smithy_async::time::SystemTimeSource::new(),
        ))
        .sleep_impl(aws_smithy_async::rt::sleep::SharedAsyncSleep::new(
            aws_smithy_async::rt::sleep::TokioSleep::new(),
        ))
        .build()
}

/// The AWS clients custody uses, built once per cold start and cloned cheaply. Each
/// counts its throttles and retries ([`AwsCallMetrics`]).
#[derive(Clone, Debug)]
pub struct Clients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub kms: aws_sdk_kms::Client,
    pub s3: aws_sdk_s3::Client,
    pub secrets: aws_sdk_secretsmanager::Client,
    pub scheduler: aws_sdk_scheduler::Client,
}

impl Clients {
    /// The clients, with faults injected only if `CUSTODY_FAULT_SEED` is set (tests;
    /// see [`crate::kernel::faults`]).
    pub fn new(config: &SdkConfig) -> Self {
        Self::with_faults(config, FaultPlan::from_env())
    }

    /// The clients, with `faults` injected into DynamoDB, KMS, S3 and Secrets Manager
    /// calls if given. The fault injector runs before the metrics interceptor reads
    /// the answer, so injected throttles are counted like real ones.
    pub fn with_faults(config: &SdkConfig, faults: Option<FaultPlan>) -> Self {
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(config);
        let mut kms = aws_sdk_kms::config::Builder::from(config);
        let mut secrets = aws_sdk_secretsmanager::config::Builder::from(config);
        if let Some(plan) = &faults {
            dynamodb.push_interceptor(
                aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(
                    plan.interceptor("dynamodb"),
                ),
            );
            kms.push_interceptor(
                aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(
                    plan.interceptor("kms"),
                ),
            );
            secrets.push_interceptor(
                aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(
                    plan.interceptor("secretsmanager"),
                ),
            );
        }
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                dynamodb
                    .interceptor(AwsCallMetrics::new("dynamodb"))
                    .build(),
            ),
            kms: aws_sdk_kms::Client::from_conf(
                kms.interceptor(AwsCallMetrics::new("kms")).build(),
            ),
            s3: s3_client_with_faults(config, faults.as_ref()),
            secrets: aws_sdk_secretsmanager::Client::from_conf(
                secrets
                    .interceptor(AwsCallMetrics::new("secretsmanager"))
                    .build(),
            ),
            scheduler: aws_sdk_scheduler::Client::from_conf(
                aws_sdk_scheduler::config::Builder::from(config)
                    .interceptor(AwsCallMetrics::new("scheduler"))
                    .build(),
            ),
        }
    }
}

/// S3 needs path-style addressing when the endpoint is overridden (an emulator on
/// `localhost` cannot serve `bucket.localhost`); real AWS keeps virtual-hosted style.
pub fn s3_client(config: &SdkConfig) -> aws_sdk_s3::Client {
    s3_client_with_faults(config, None)
}

fn s3_client_with_faults(config: &SdkConfig, faults: Option<&FaultPlan>) -> aws_sdk_s3::Client {
    let mut builder = aws_sdk_s3::config::Builder::from(config);
    if let Some(plan) = faults {
        builder.push_interceptor(
            aws_smithy_runtime_api::client::interceptors::SharedInterceptor::new(
                plan.interceptor("s3"),
            ),
        );
    }
    let mut builder = builder.interceptor(AwsCallMetrics::new("s3"));
    if config.endpoint_url().is_some() {
        builder = builder.force_path_style(true);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

/// The error text of an SDK error, including the service's own message, without
/// the request (which may carry secrets in its body).
pub fn error_text<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: std::error::Error + aws_sdk_dynamodb::error::ProvideErrorMetadata + 'static,
    R: std::fmt::Debug,
{
    match err.as_service_error() {
        Some(service) => format!(
            "{}: {}",
            service.code().unwrap_or("ServiceError"),
            service.message().unwrap_or("no message")
        ),
        None => {
            use std::error::Error as _;
            let mut text = err.to_string();
            let mut source = err.source();
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}
