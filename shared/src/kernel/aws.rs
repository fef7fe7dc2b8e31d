//! The one place that loads the AWS SDK configuration and builds the clients.
//!
//! In Lambda the defaults apply (role credentials, `AWS_REGION`). Locally the same
//! code talks to the emulator: the SDK honours `AWS_ENDPOINT_URL`, and
//! [`sdk_config_for_endpoint`] builds an explicit config for tests, which must not
//! share process-wide environment variables while running in parallel.

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

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
    pub fn new(config: &SdkConfig) -> Self {
        Self {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                aws_sdk_dynamodb::config::Builder::from(config)
                    .interceptor(AwsCallMetrics::new("dynamodb"))
                    .build(),
            ),
            kms: aws_sdk_kms::Client::from_conf(
                aws_sdk_kms::config::Builder::from(config)
                    .interceptor(AwsCallMetrics::new("kms"))
                    .build(),
            ),
            s3: s3_client(config),
            secrets: aws_sdk_secretsmanager::Client::from_conf(
                aws_sdk_secretsmanager::config::Builder::from(config)
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
    let mut builder =
        aws_sdk_s3::config::Builder::from(config).interceptor(AwsCallMetrics::new("s3"));
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
