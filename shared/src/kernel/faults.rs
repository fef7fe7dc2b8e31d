//! Test-only fault injection into AWS SDK calls (issue "Nothing lost silently", part 6).
//!
//! An SDK interceptor that, on seeded call numbers, replaces the service's answer with
//! a throttling error (DynamoDB `ProvisionedThroughputExceededException`, KMS and
//! Secrets Manager `ThrottlingException`, S3 `503 SlowDown`), a 500/503, or a 504
//! standing for a timeout. It is attached to the DynamoDB, KMS, S3 and Secrets Manager
//! clients by [`crate::kernel::aws::Clients`] only when `CUSTODY_FAULT_SEED` is set:
//! no deployed function sets it (a template test holds that).
//!
//! Why the answer is replaced after the service handled the request: that is the
//! harsher case (the write happened, the caller sees a failure and retries), the one
//! that reveals non-idempotent retries; an interceptor cannot stop a request without
//! turning it into a non-retryable error. Why a 504 for a timeout: an interceptor
//! cannot raise a connector timeout, and a 504 is what a timed-out hop answers; the
//! SDK retries both alike.
//!
//! Which calls fail is a pure function of (seed, call number): call `k` starts a
//! burst with probability `rate_per_mille / 1000`, of 1 to [`MAX_BURST`] calls of one
//! fault kind. Bursts longer than the SDK's attempts (3 by default) exhaust its retry;
//! shorter ones are absorbed. The call counter is shared by the clients of one
//! [`FaultPlan`], so concurrent calls may draw each other's numbers: a seed fixes the
//! faults of a sequential journey exactly, and their density otherwise.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_runtime_api::http::{Response, StatusCode};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;

/// Environment variable holding the seed; unset (the default everywhere but the
/// fault-injection tests) means no injection.
pub const SEED_ENV: &str = "CUSTODY_FAULT_SEED";
/// Environment variable for the burst start rate per thousand calls (default
/// [`DEFAULT_RATE_PER_MILLE`]).
pub const RATE_ENV: &str = "CUSTODY_FAULT_RATE";
/// Default burst start rate: about one call in 25 starts a burst.
pub const DEFAULT_RATE_PER_MILLE: u64 = 40;
/// Longest burst: one more than the SDK's default attempts, so some bursts exhaust it.
pub const MAX_BURST: u64 = 4;

/// A fault replacing one answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    InternalError,
    Unavailable,
    Timeout,
}

#[derive(Debug)]
struct PlanInner {
    seed: u64,
    rate_per_mille: u64,
    calls: AtomicU64,
    injected: AtomicU64,
}

/// The faults of one seed, shared by the clients built with it.
#[derive(Clone, Debug)]
pub struct FaultPlan(Arc<PlanInner>);

/// SplitMix64: a well-mixed 64-bit hash, enough to draw independent values per call.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl FaultPlan {
    pub fn new(seed: u64, rate_per_mille: u64) -> Self {
        Self(Arc::new(PlanInner {
            seed,
            rate_per_mille: rate_per_mille.min(1000),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }))
    }

    /// The plan named by [`SEED_ENV`] (and [`RATE_ENV`]), if the seed is set. A value
    /// that is not a number is ignored with a warning rather than failing a cold start.
    pub fn from_env() -> Option<Self> {
        let seed = std::env::var(SEED_ENV).ok()?;
        let Ok(seed) = seed.trim().parse::<u64>() else {
            tracing::warn!(variable = SEED_ENV, "not a number; no faults injected");
            return None;
        };
        let rate = std::env::var(RATE_ENV)
            .ok()
            .and_then(|rate| rate.trim().parse::<u64>().ok())
            .unwrap_or(DEFAULT_RATE_PER_MILLE);
        tracing::warn!(seed, rate, "AWS fault injection enabled (test only)");
        Some(Self::new(seed, rate))
    }

    pub fn seed(&self) -> u64 {
        self.0.seed
    }

    /// Calls seen so far.
    pub fn calls(&self) -> u64 {
        self.0.calls.load(Ordering::Relaxed)
    }

    /// Answers replaced so far.
    pub fn injected(&self) -> u64 {
        self.0.injected.load(Ordering::Relaxed)
    }

    fn draw(&self, call: u64, salt: u64) -> u64 {
        mix(mix(self.0.seed ^ salt.wrapping_mul(0xA24B_AED4_963E_E407)) ^ call)
    }

    /// The fault of call number `call` (0-based), if any: the fault of a burst that
    /// started at or before it and still covers it.
    pub fn fault_at(&self, call: u64) -> Option<Fault> {
        let first = call.saturating_sub(MAX_BURST - 1);
        (first..=call).rev().find_map(|start| {
            if self.draw(start, 1) % 1000 >= self.0.rate_per_mille {
                return None;
            }
            let len = 1 + self.draw(start, 2) % MAX_BURST;
            if start + len <= call {
                return None;
            }
            Some(match self.draw(start, 3) % 4 {
                0 => Fault::Throttle,
                1 => Fault::InternalError,
                2 => Fault::Unavailable,
                _ => Fault::Timeout,
            })
        })
    }

    /// The interceptor for one client of `service` (`dynamodb`, `kms`, `s3`,
    /// `secretsmanager`), counting calls with the other clients of this plan.
    pub fn interceptor(&self, service: &'static str) -> FaultInjector {
        FaultInjector {
            plan: self.clone(),
            service,
        }
    }
}

/// The SDK interceptor of a [`FaultPlan`] for one service.
#[derive(Debug)]
pub struct FaultInjector {
    plan: FaultPlan,
    service: &'static str,
}

/// The answer the service would give for `fault`: status, `x-amzn-errortype` (JSON
/// protocols), content type and body, in the service's protocol.
fn answer(service: &str, fault: Fault) -> (u16, Option<&'static str>, &'static str, String) {
    let s3 = service == "s3";
    let (status, code) = match (fault, s3, service) {
        (Fault::Throttle, true, _) => (503, "SlowDown"),
        (Fault::Throttle, false, "dynamodb") => (400, "ProvisionedThroughputExceededException"),
        (Fault::Throttle, false, _) => (400, "ThrottlingException"),
        (Fault::InternalError, true, _) => (500, "InternalError"),
        (Fault::InternalError, false, "dynamodb") => (500, "InternalServerError"),
        (Fault::InternalError, false, _) => (500, "InternalFailure"),
        (Fault::Unavailable, true, _) => (503, "ServiceUnavailable"),
        (Fault::Unavailable, false, _) => (503, "ServiceUnavailable"),
        (Fault::Timeout, _, _) => (504, "GatewayTimeout"),
    };
    if s3 {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected fault</Message></Error>"
        );
        (status, None, "application/xml", body)
    } else {
        let body = format!(r#"{{"__type":"{code}","message":"injected fault"}}"#);
        (status, Some(code), "application/x-amz-json-1.1", body)
    }
}

/// The synthetic HTTP response for `fault` from `service`.
pub fn fault_response(service: &str, fault: Fault) -> Result<Response, BoxError> {
    let (status, error_type, content_type, body) = answer(service, fault);
    let mut response = Response::new(StatusCode::try_from(status)?, SdkBody::from(body));
    response.headers_mut().insert("content-type", content_type);
    if let Some(error_type) = error_type {
        response
            .headers_mut()
            .insert("x-amzn-errortype", error_type);
    }
    Ok(response)
}

impl Intercept for FaultInjector {
    fn name(&self) -> &'static str {
        "custody::faults::FaultInjector"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let call = self.plan.0.calls.fetch_add(1, Ordering::Relaxed);
        if let Some(fault) = self.plan.fault_at(call) {
            self.plan.0.injected.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(service = self.service, call, ?fault, "injected AWS fault");
            *context.response_mut() = fault_response(self.service, fault)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::metrics::is_throttle;

    #[test]
    fn a_seed_fixes_the_faults_and_seeds_differ() {
        let a: Vec<_> = (0..500)
            .map(|n| FaultPlan::new(7, 40).fault_at(n))
            .collect();
        let again: Vec<_> = (0..500)
            .map(|n| FaultPlan::new(7, 40).fault_at(n))
            .collect();
        let other: Vec<_> = (0..500)
            .map(|n| FaultPlan::new(8, 40).fault_at(n))
            .collect();
        assert_eq!(a, again);
        assert_ne!(a, other);
        assert!((0..500).all(|n| FaultPlan::new(7, 0).fault_at(n).is_none()));
    }

    #[test]
    fn bursts_both_shorter_and_longer_than_the_sdk_attempts_occur() {
        let plan = FaultPlan::new(42, 40);
        let faults: Vec<bool> = (0..20_000).map(|n| plan.fault_at(n).is_some()).collect();
        let mut runs = Vec::new();
        let mut run = 0;
        for faulted in faults {
            if faulted {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        assert!(runs.iter().any(|&r| r < 3), "no burst the SDK absorbs");
        assert!(
            runs.iter().any(|&r| r >= 3),
            "no burst that exhausts 3 attempts"
        );
        let faulted: usize = runs.iter().sum();
        // About rate × mean burst length (2.5): 10 % of calls, well away from all/none.
        assert!(
            (1000..3000).contains(&faulted),
            "{faulted} of 20000 faulted"
        );
    }

    #[test]
    fn throttles_read_as_throttles_to_the_metrics_interceptor() {
        for service in ["dynamodb", "kms", "s3", "secretsmanager"] {
            let (status, error_type, _, body) = answer(service, Fault::Throttle);
            assert!(
                is_throttle(status, error_type, body.as_bytes()),
                "{service}"
            );
            let (status, error_type, _, body) = answer(service, Fault::InternalError);
            assert!(
                !is_throttle(status, error_type, body.as_bytes()),
                "{service}"
            );
        }
    }
}
