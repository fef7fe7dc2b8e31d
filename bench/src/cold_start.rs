//! Cold start: time from process start to the first poll of the Runtime API
//! (`GET /2018-06-01/runtime/invocation/next`), as custody-local's Runtime API
//! records it.

use std::path::PathBuf;
use std::time::Duration;

use custody_local::runtime_api::LocalFunction;
use serde::Serialize;

use crate::BenchError;
use crate::stats::{Summary, summarize};

/// What is started: a function, the bare-runtime baseline or the Python baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Function,
    RustBaseline,
    PythonBaseline,
}

#[derive(Debug, Clone)]
pub struct Subject {
    pub name: String,
    pub kind: Kind,
    pub program: PathBuf,
    pub env: Vec<(String, String)>,
}

/// One process start. An exit or init failure shows as no poll within `limit`.
pub async fn once(subject: &Subject, limit: Duration) -> Result<Duration, BenchError> {
    let function = LocalFunction::start(
        &subject.name,
        &subject.program,
        &subject.env,
        Duration::from_secs(30),
    )
    .await
    .map_err(|e| BenchError::file(&subject.program, e))?;
    let first_poll = function.wait_first_poll(limit).await;
    function.stop().await;
    first_poll.ok_or_else(|| {
        BenchError::Measurement(format!(
            "{} did not poll the Runtime API within {limit:?} (it exited or failed its init; its stderr is above)",
            subject.name
        ))
    })
}

/// `runs` timed starts of every subject after one untimed start each (so every
/// binary is in the page cache, as on a warm Lambda host). Rounds are interleaved
/// (a, b, c, a, b, c, …) so load from other work on the machine hits all subjects
/// alike. A subject that fails once is not started again.
pub async fn measure(
    subjects: &[Subject],
    runs: usize,
    limit: Duration,
) -> Vec<Result<(Summary, Vec<Duration>), String>> {
    let mut samples: Vec<Result<Vec<Duration>, String>> = Vec::new();
    for subject in subjects {
        samples.push(
            once(subject, limit)
                .await
                .map(|_| Vec::new())
                .map_err(|e| e.to_string()),
        );
    }
    for _ in 0..runs {
        for (subject, taken) in subjects.iter().zip(samples.iter_mut()) {
            let Ok(list) = taken else { continue };
            match once(subject, limit).await {
                Ok(duration) => list.push(duration),
                Err(err) => *taken = Err(err.to_string()),
            }
        }
    }
    samples
        .into_iter()
        .map(|taken| {
            taken.and_then(|list| {
                summarize(&list)
                    .map(|summary| (summary, list))
                    .ok_or_else(|| "no runs".to_owned())
            })
        })
        .collect()
}
