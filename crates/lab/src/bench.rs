//! Figures for the benchmarks and the long-running tests: percentiles, a
//! printed row with the p50 as a ratio of a baseline measured in the same
//! run, a process's resident memory, and a small seeded random generator
//! for runs that must be replayable.

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

/// How many sandboxes a load bench keeps alive: `SANDGATE_LOAD_SANDBOXES`,
/// or `default`.
pub fn load_sandboxes(default: usize) -> usize {
    std::env::var("SANDGATE_LOAD_SANDBOXES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The resident memory of process `pid` (`VmRSS`), in KiB.
pub fn rss_kib(pid: u32) -> std::io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no VmRSS for process {pid}")))
}

/// A xorshift generator: the same seed gives the same numbers, so a run
/// that printed its seed can be replayed. Not for anything secret.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator from `seed` (0 is taken as 1).
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    /// The next number.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// What `ns` sends to the lab's [`crate::addrs::SINK`] at `dest` over one
/// TCP connection for `time`, in megabits a second of payload: the bytes
/// the sink counted, over the time from the first it received to the last
/// (bytes still queued on the way when the sender stops are waited for
/// and counted).
pub fn upload_mbit(
    ns: &sandgate_netns::Netns,
    dest: std::net::IpAddr,
    time: Duration,
) -> std::io::Result<f64> {
    upload_mbit_at_most(ns, dest, time, f64::INFINITY)
}

/// Whether `measured` (payload, Mbit/s) is what a budget of `budget`
/// gives: never more than it (10% for the pacer's burst and the
/// measure's edges), and not far under: the budget counts the wire's
/// bytes (payload is about 4.5% less), and a host of two cores loaded
/// by the rest of the suite stretches the sender and the sink (19.3 of
/// 20 alone; 17.5 seen under load). Unpaced, the same flow sends
/// hundreds of times more.
pub fn within_budget(measured: f64, budget: f64) -> bool {
    measured <= budget * 1.1 && measured >= budget * 0.75
}

/// [`upload_mbit`], the sender keeping itself at or under `cap` megabits
/// a second: a neighbour that must not take the host's every cycle from
/// the flow a test measures beside it (two cores).
pub fn upload_mbit_at_most(
    ns: &sandgate_netns::Netns,
    dest: std::net::IpAddr,
    time: Duration,
    cap: f64,
) -> std::io::Result<f64> {
    use std::io::{Read, Write};
    assert!(
        crate::addrs::is_lab_address(dest),
        "{dest} is not a lab address"
    );
    ns.run(move || {
        let addr = std::net::SocketAddr::new(dest, crate::addrs::SINK);
        let mut conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        conn.set_write_timeout(Some(Duration::from_secs(5)))?;
        let chunk = vec![b's'; 64 * 1024];
        let start = std::time::Instant::now();
        let mut sent = 0f64;
        while start.elapsed() < time {
            conn.write_all(&chunk)?;
            sent += chunk.len() as f64;
            // Ahead of the cap: wait until the bytes sent are its due.
            let due = Duration::from_secs_f64((sent * 8.0 / (cap * 1e6)).min(3600.0));
            if let Some(ahead) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        conn.shutdown(std::net::Shutdown::Write)?;
        conn.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut count = String::new();
        conn.read_to_string(&mut count)?;
        // "BYTES MICROS": what it received, from its first byte to its
        // last (the connection's setup and the answer's way back, which
        // a loaded host may stretch, are not the rate).
        let said = || std::io::Error::other(format!("the sink said {count:?}"));
        let mut words = count.split_whitespace();
        let bytes: f64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(said)?;
        let micros: f64 = words.next().and_then(|w| w.parse().ok()).ok_or_else(said)?;
        if micros <= 0.0 {
            return Err(said());
        }
        Ok(bytes * 8.0 / micros)
    })
}
