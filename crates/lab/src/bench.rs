//! Latency figures for the benchmarks: percentiles, and a printed row with
//! the p50 as a ratio of a baseline measured in the same run.

use std::time::Duration;

/// The `q` quantile (0.5 for the median) of `v`, nearest rank.
pub fn percentile(v: &[Duration], q: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i]
}

/// Prints one row: `name`, p50 and p99 of `v` in milliseconds and, with a
/// `base`line, the ratio of the two p50s.
pub fn stats(name: &str, v: &[Duration], base: Option<&[Duration]>) {
    let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
    let ratio = base
        .map(|b| {
            format!(
                "  {:.3}x of the baseline's p50",
                p50.as_secs_f64() / percentile(b, 0.5).as_secs_f64()
            )
        })
        .unwrap_or_default();
    println!(
        "  {name:<44} p50 {:>10.3} ms  p99 {:>10.3} ms{ratio}",
        ms(p50),
        ms(p99)
    );
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The runs per series: `SANDGATE_BENCH_RUNS`, else `default`.
pub fn runs(default: usize) -> usize {
    std::env::var("SANDGATE_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
