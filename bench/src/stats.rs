//! Summaries of repeated timings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Milliseconds, rounded to microseconds for the results file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub runs: usize,
    pub median_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// `None` for no samples. Median of an even count is the mean of the middle two;
/// p90 is the nearest rank (the value at or below which 90 % of runs fall).
pub fn summarize(samples: &[Duration]) -> Option<Summary> {
    if samples.is_empty() {
        return None;
    }
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    let p90_rank = ((n as f64) * 0.9).ceil() as usize;
    Some(Summary {
        runs: n,
        median_ms: round_us(median),
        p90_ms: round_us(ms[p90_rank.clamp(1, n) - 1]),
        min_ms: round_us(ms[0]),
        max_ms: round_us(ms[n - 1]),
    })
}

/// `a / b` rounded to two decimals; `None` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| (a / b * 100.0).round() / 100.0)
}

pub fn round_us(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: &[u64]) -> Vec<Duration> {
        values.iter().map(|&v| Duration::from_millis(v)).collect()
    }

    #[test]
    fn median_and_p90_by_nearest_rank() {
        let s = summarize(&ms(&[10, 1, 9, 2, 8, 3, 7, 4, 6, 5])).unwrap();
        assert_eq!(
            (s.median_ms, s.p90_ms, s.min_ms, s.max_ms),
            (5.5, 9.0, 1.0, 10.0)
        );
        let s = summarize(&ms(&[3, 1, 2])).unwrap();
        assert_eq!((s.median_ms, s.p90_ms), (2.0, 3.0));
        assert_eq!(summarize(&[]), None);
    }

    #[test]
    fn ratios_are_rounded_and_never_divide_by_zero() {
        assert_eq!(ratio(10.0, 3.0), Some(3.33));
        assert_eq!(ratio(1.0, 0.0), None);
    }
}
