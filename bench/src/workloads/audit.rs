//! Audit chain appends (`custody::audit`): appends/s and per-append latency with 1,
//! 10 and 50 concurrent writers on one tenant's chain, against the emulator. The
//! writers race for the chain head (a conditional put); contention shows as retries
//! (`attempts_*`) and a longer tail, not as lost or forked entries: the chain is
//! verified afterwards.

use std::time::{Duration, Instant};

use custody::audit::{AuditClass, Event};
use custody::tenant::TenantId;
use custody_local::harness::TestStack;
use serde_json::{Value, json};

use crate::BenchError;

/// Appends per row, split across the writers, so every row does the same work.
const APPENDS: usize = 500;

fn failed(what: &str, err: impl std::fmt::Display) -> BenchError {
    BenchError::Measurement(format!("audit workload: {what}: {err}"))
}

/// Nearest-rank percentile of sorted `ms`.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((sorted.len() as f64) * p).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub async fn run(writers: u64) -> Result<Value, BenchError> {
    let writers = usize::try_from(writers.max(1)).map_err(|e| failed("writers", e))?;
    let stack = TestStack::new().await;
    let log = stack.audit(TestStack::system_clock());
    let tenant = TenantId::parse("bench-audit").map_err(|e| failed("tenant", e))?;
    let each = APPENDS.div_ceil(writers);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (log, tenant) = (log.clone(), tenant.clone());
            tokio::spawn(async move {
                let mut samples = Vec::with_capacity(each);
                for i in 0..each {
                    let event = Event::new("bench", "export.completed", format!("RUN#{w}-{i}"))
                        .detail("messages", i as u64);
                    let at = Instant::now();
                    let (_, attempts) = log.append_counted(&tenant, event).await?;
                    samples.push((at.elapsed(), attempts));
                }
                Ok::<_, custody::audit::AuditError>(samples)
            })
        })
        .collect();
    let mut samples: Vec<(Duration, u32)> = Vec::new();
    for task in tasks {
        let done = task.await.map_err(|e| failed("writer", e))?;
        samples.extend(done.map_err(|e| failed("append", e))?);
    }
    let elapsed = started.elapsed();

    let verified = log
        .verify(&tenant)
        .await
        .map_err(|e| failed("verify", e))?
        .map_err(|e| failed("verify", e))?;
    let entries = verified
        .chain(AuditClass::Activity)
        .map_or(0, |chain| chain.entries);
    if entries != samples.len() as u64 {
        return Err(failed(
            "verify",
            format!("{entries} entries for {} appends", samples.len()),
        ));
    }

    let mut ms: Vec<f64> = samples.iter().map(|(d, _)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let mut attempts: Vec<u32> = samples.iter().map(|(_, a)| *a).collect();
    attempts.sort_unstable();
    let round = |v: f64| (v * 1e3).round() / 1e3;
    Ok(json!({
        "writers": writers,
        "appends": samples.len(),
        "appends_per_s": round(samples.len() as f64 / elapsed.as_secs_f64()),
        "p50_ms": round(percentile(&ms, 0.5)),
        "p99_ms": round(percentile(&ms, 0.99)),
        "max_ms": round(ms[ms.len() - 1]),
        "attempts_p50": attempts[attempts.len() / 2],
        "attempts_max": attempts[attempts.len() - 1],
        "chain_verified": true,
    }))
}
