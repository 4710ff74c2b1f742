//! Percentiles of latency samples, as the reports print them.

use std::time::Duration;

use serde::Serialize;

/// The median and 99th percentile of a set of durations, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Half of the samples took at most this long.
    pub p50: f64,
    /// 99 % of the samples took at most this long.
    pub p99: f64,
}

impl Percentiles {
    /// The percentiles of `samples` by nearest rank (the smallest sample
    /// with at least p % of the samples at or below it), so each figure is
    /// a latency that was really measured; `None` without samples.
    pub fn of(samples: &[Duration]) -> Option<Percentiles> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        Some(Percentiles {
            p50: millis(nearest_rank(&sorted, 50)?),
            p99: millis(nearest_rank(&sorted, 99)?),
        })
    }
}

/// The sample of rank ⌈p/100 × n⌉ of the sorted `samples`.
fn nearest_rank(sorted: &[Duration], percent: usize) -> Option<Duration> {
    let rank = (sorted.len() * percent).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

/// Milliseconds with two decimals, as the tables show them.
fn millis(duration: Duration) -> f64 {
    round(duration.as_secs_f64() * 1000.0, 2)
}

/// `value` rounded to `decimals` places, for JSON that reads well.
pub fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(values: impl IntoIterator<Item = u64>) -> Vec<Duration> {
        values.into_iter().map(Duration::from_millis).collect()
    }

    #[test]
    fn nearest_rank_picks_measured_samples() {
        let samples = ms((1..=100).rev());
        assert_eq!(
            Percentiles::of(&samples),
            Some(Percentiles {
                p50: 50.0,
                p99: 99.0
            })
        );
        let three = ms([30, 10, 20]);
        assert_eq!(
            Percentiles::of(&three),
            Some(Percentiles {
                p50: 20.0,
                p99: 30.0
            })
        );
        assert_eq!(Percentiles::of(&ms([7])).map(|p| p.p99), Some(7.0));
    }

    #[test]
    fn no_samples_no_percentiles() {
        assert_eq!(Percentiles::of(&[]), None);
    }
}
