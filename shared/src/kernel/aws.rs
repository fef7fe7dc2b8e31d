//! The one place that loads the AWS SDK configuration and builds the clients.
//!
//! In Lambda, [`lambda_sdk_config`] reads what the platform sets (the role's
//! credentials, `AWS_REGION`). Locally the same code talks to the emulator through
//! `AWS_ENDPOINT_URL`, and [`sdk_config_for_endpoint`] builds an explicit config for
//! tests, which must not share process-wide environment variables while running in
//! parallel. Command-line tools keep the SDK's full default chain ([`sdk_config`]).

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_dynamodb::config::Credentials;

use crate::kernel::faults::FaultPlan;
use crate::kernel::metrics::AwsCallMetrics;

/// Loads the SDK config with the SDK's full default chain (profiles, SSO, assumed
/// roles, instance metadata): for command-line tools run by people. Functions use
/// [`lambda_sdk_config`].
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Why a function cannot build its SDK config. Init errors only: Lambda reports them
/// as `Runtime.InitError`; no caller ever sees one (no HTTP mapping).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LambdaEnvError {
    #[error("{0} is not set: the Lambda environment provides it")]
    Missing(&'static str),
}

/// The SDK config of a Lambda function, from the variables Lambda sets for every
/// function: the execution role's credentials (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`) and `AWS_REGION`; plus
/// `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>` where a local stack sets them.
///
/// Why not `aws_config::defaults`: its chain reads profile files and links the STS,
/// SSO, web-identity, ECS and instance-metadata providers, none of which a function
/// can use. Leaving them out takes bytes from every bootstrap and the profile reads
/// from every cold start (docs/PERFORMANCE.md has both measured).
pub fn lambda_sdk_config() -> Result<SdkConfig, LambdaEnvError> {
    lambda_sdk_config_from(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
}

/// [`lambda_sdk_config`] over any source of variables (tests pass a map).
pub fn lambda_sdk_config_from(
    var: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
) -> Result<SdkConfig, LambdaEnvError> {
    let region = var("AWS_REGION")
        .or_else(|| var("AWS_DEFAULT_REGION"))
        .ok_or(LambdaEnvError::Missing("AWS_REGION"))?;
    let key = var("AWS_ACCESS_KEY_ID").ok_or(LambdaEnvError::Missing("AWS_ACCESS_KEY_ID"))?;
    let secret =
        var("AWS_SECRET_ACCESS_KEY").ok_or(LambdaEnvError::Missing("AWS_SECRET_ACCESS_KEY"))?;
    // Lambda's variables do not change while the process runs, so the credentials are
    // read once, as the SDK's environment provider would read them.
    let credentials = Credentials::new(
        key,
        secret,
        var("AWS_SESSION_TOKEN"),
        None,
        "lambda-environment",
    );
    let mut builder = SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region))
        .credentials_provider(aws_sdk_dynamodb::config::SharedCredentialsProvider::new(
            credentials,
        ))
        // The defaults `aws_config` would set: standard retries, a 3.1 s connect timeout.
        .retry_config(aws_smithy_types::retry::RetryConfig::standard())
        .timeout_config(
            aws_smithy_types::timeout::TimeoutConfig::builder()
                .connect_timeout(std::time::Duration::from_millis(3100))
                .build(),
        )
        .time_source(aws_smithy_async::time::SharedTimeSource::new(
            aws_smithy_async::time::SystemTimeSource::new(),
        ))
        .sleep_impl(aws_smithy_async::rt::sleep::SharedAsyncSleep::new(
            aws_smithy_async::rt::sleep::TokioSleep::new(),
        ));
    if let Some(endpoint) = var("AWS_ENDPOINT_URL") {
        builder = builder.endpoint_url(endpoint);
    }
    Ok(builder
        .service_config(ServiceEndpoints(Box::new(var)))
        .build())
}

/// `AWS_ENDPOINT_URL_<SERVICE>` (the service id upper-cased, spaces as `_`), which the
/// clients ask for before the shared `AWS_ENDPOINT_URL`: the local stack points the
/// Lambda client at its own Runtime API this way.
struct ServiceEndpoints(Box<VarSource>);

/// Where variables are read from (the process environment, or a test's map).
type VarSource = dyn Fn(&str) -> Option<String> + Send + Sync;

impl std::fmt::Debug for ServiceEndpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceEndpoints")
    }
}

impl aws_types::service_config::LoadServiceConfig for ServiceEndpoints {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        let service = key
            .service_id()
            .to_ascii_uppercase()
            .replace([' ', '-'], "_");
        (self.0)(&format!("{}_{service}", key.env()))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Send + Sync + 'static {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name: &str| map.get(name).cloned()
    }

    const LAMBDA: &[(&str, &str)] = &[
        ("AWS_REGION", "eu-central-1"),
        ("AWS_ACCESS_KEY_ID", "AKIDLAMBDAROLE"),
        ("AWS_SECRET_ACCESS_KEY", "role-secret"),
        ("AWS_SESSION_TOKEN", "role-session"),
    ];

    #[test]
    fn a_missing_lambda_variable_is_named() {
        assert_eq!(
            lambda_sdk_config_from(vars(&LAMBDA[1..])).unwrap_err(),
            LambdaEnvError::Missing("AWS_REGION")
        );
        assert_eq!(
            lambda_sdk_config_from(vars(&[LAMBDA[0], LAMBDA[2]])).unwrap_err(),
            LambdaEnvError::Missing("AWS_ACCESS_KEY_ID")
        );
        let config = lambda_sdk_config_from(vars(LAMBDA)).unwrap();
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-central-1"));
        assert_eq!(config.endpoint_url(), None);
    }

    /// One HTTP request, answered as DynamoDB answers ListTables; returns its head.
    async fn one_request(listener: tokio::net::TcpListener) -> String {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the request head");
            seen.extend_from_slice(&buf[..n]);
        }
        let body = br#"{"TableNames":[]}"#;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/x-amz-json-1.0\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(body).await.unwrap();
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn requests_go_to_the_service_endpoint_signed_with_the_roles_credentials() {
        let service = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let service_url = format!("http://{}", service.local_addr().unwrap());
        // The shared endpoint refuses connections: only the service's own may be used.
        let unused = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shared_url = format!("http://{}", unused.local_addr().unwrap());
        drop(unused);
        let mut pairs = LAMBDA.to_vec();
        pairs.push(("AWS_ENDPOINT_URL", &shared_url));
        pairs.push(("AWS_ENDPOINT_URL_DYNAMODB", &service_url));
        let config = lambda_sdk_config_from(vars(&pairs)).unwrap();
        assert_eq!(config.endpoint_url(), Some(shared_url.as_str()));
        let server = tokio::spawn(one_request(service));
        let client = aws_sdk_dynamodb::Client::new(&config);
        let tables = client.list_tables().send().await.unwrap();
        assert!(tables.table_names().is_empty());
        let head = server.await.unwrap().to_ascii_lowercase();
        assert!(
            head.contains("credential=akidlambdarole/") && head.contains("/eu-central-1/dynamodb/"),
            "{head}"
        );
        assert!(
            head.contains("x-amz-security-token: role-session"),
            "{head}"
        );
    }
}
