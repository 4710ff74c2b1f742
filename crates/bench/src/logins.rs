//! `logins`: a burst of failed sign-ins against a running server, and the
//! server's resident memory before, during and after it.
//!
//! First `accounts` accounts register (one after the other, each from an
//! address of its own in 127.0.1.0/24, so the per-address throttle of
//! Register does not refuse them). `settle_secs` later the server's
//! resident memory
//! (`VmRSS` of `/proc/PID/status`) is the baseline, its peak counter
//! (`VmHWM`) is reset through `/proc/PID/clear_refs` where the kernel
//! allows it, and `attempts` sign-ins with wrong passwords start at once,
//! each from a loopback address of its own (`first_address` and on:
//! 127.0.0.2 … 127.0.0.201 for 200) and for an email of its own: every
//! `attempts / accounts`-th one an account's (a wrong password), the others
//! unknown. So neither the per-address nor the per-account throttle answers
//! before the password work, and every attempt costs the server one argon2id
//! verification. Every attempt must be refused with 401; the resident memory
//! is sampled every `sample_ms` until the last answer, and again 1, 3 and 5
//! seconds after it.
//!
//! Only 127.0.0.0/8 is used: the server must be on loopback, and the
//! sources are loopback addresses, which Linux routes to `lo` without any
//! configuration.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Barrier;

use crate::stats::round;

/// The password every bench account registers with.
const ACCOUNT_PASSWORD: &str = "bench pass phrase for accounts";

/// What the `logins` subcommand runs.
#[derive(Debug, Clone, clap::Args)]
pub struct LoginsOptions {
    /// The server, on a loopback address, such as http://127.0.0.1:8080.
    #[arg(long, value_name = "URL")]
    pub base_url: String,
    /// The server's process id, whose /proc/PID/status is read.
    #[arg(long)]
    pub pid: u32,
    /// Failed sign-ins started at once.
    #[arg(long, default_value_t = 200)]
    pub attempts: u32,
    /// Accounts registered first; that many of the attempts name one of
    /// them (with a wrong password), the others an unknown email.
    #[arg(long, default_value_t = 40)]
    pub accounts: u32,
    /// The source address of the first attempt; attempt i comes from this
    /// address plus i. Must be in 127.0.0.0/8.
    #[arg(long, default_value = "127.0.0.2")]
    pub first_address: Ipv4Addr,
    /// How often the server's resident memory is read during the burst, in
    /// milliseconds.
    #[arg(long, default_value_t = 20)]
    pub sample_ms: u64,
    /// Seconds to wait after the registrations before reading the
    /// baseline, so that it holds nothing the server keeps only for a
    /// moment after password work.
    #[arg(long, default_value_t = 2)]
    pub settle_secs: u64,
    /// Give up on one attempt after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_secs: u64,
}

/// What a `logins` run measured: the one JSON line it prints. Memory in MiB.
#[derive(Debug, Clone, Serialize)]
pub struct LoginsReport {
    /// Sign-ins started at once.
    pub attempts: u32,
    /// Of them, for registered accounts (the rest for unknown emails).
    pub for_accounts: u32,
    /// Attempts answered 401, as every one should be.
    pub refused: u32,
    /// Attempts answered otherwise, or not at all, as "status: count".
    pub unexpected: Vec<String>,
    /// From the start of the burst to its last answer, in seconds.
    pub burst_s: f64,
    /// Resident memory after the accounts registered, before the burst.
    pub baseline_mib: f64,
    /// The most resident memory seen by sampling during the burst.
    pub peak_sampled_mib: f64,
    /// The kernel's peak (`VmHWM`) over the burst, when it could be reset
    /// before it; otherwise `None`.
    pub peak_hwm_mib: Option<f64>,
    /// Resident memory at the last answer.
    pub at_end_mib: f64,
    /// Resident memory 1 s after the last answer.
    pub after_1s_mib: f64,
    /// 3 s after.
    pub after_3s_mib: f64,
    /// 5 s after.
    pub after_5s_mib: f64,
}

/// A field of `/proc/PID/status` such as `VmRSS`, in KiB.
pub(crate) fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

/// KiB as MiB with one decimal.
pub(crate) fn mib(kib: u64) -> f64 {
    round(kib as f64 / 1024.0, 1)
}

/// The address `offset` after `first`, refusing anything outside
/// 127.0.0.0/8.
pub(crate) fn loopback_plus(first: Ipv4Addr, offset: u32) -> anyhow::Result<IpAddr> {
    let address = u32::from(first)
        .checked_add(offset)
        .map(Ipv4Addr::from)
        .context("source address out of range")?;
    ensure!(
        address.octets()[0] == 127,
        "source address {address} is not in 127.0.0.0/8"
    );
    Ok(IpAddr::V4(address))
}

/// A client whose connections come from `source`.
fn client_from(source: IpAddr, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .local_address(source)
        .timeout(timeout)
        .build()
        .context("cannot build an HTTP client")
}

/// The email of bench account `index`.
fn account_email(index: u32) -> String {
    format!("bench-account-{index}@example.test")
}

/// Registers the accounts, then runs the burst and reads the memory.
///
/// # Errors
///
/// When the server is not on a loopback address, an account cannot
/// register, or the server's `/proc` entry cannot be read; attempts that
/// are not refused with 401 are counted in
/// [`LoginsReport::unexpected`] instead.
pub async fn run(options: &LoginsOptions) -> anyhow::Result<LoginsReport> {
    let base = reqwest::Url::parse(&options.base_url).context("--base-url")?;
    let on_loopback = base
        .host_str()
        .and_then(|host| host.parse::<Ipv4Addr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    ensure!(on_loopback, "the server must be on 127.0.0.0/8, not {base}");
    ensure!(options.attempts > 0, "--attempts must be at least 1");
    ensure!(
        options.accounts <= options.attempts,
        "--accounts must not exceed --attempts"
    );
    let base = options.base_url.trim_end_matches('/').to_owned();
    let timeout = Duration::from_secs(options.timeout_secs.max(1));
    // Every attempt's source exists before anything is sent.
    let sources = (0..options.attempts)
        .map(|i| loopback_plus(options.first_address, i))
        .collect::<anyhow::Result<Vec<_>>>()?;

    register_accounts(&base, options.accounts, timeout).await?;
    tokio::time::sleep(Duration::from_secs(options.settle_secs)).await;
    let pid = options.pid;
    let baseline = status_kib(pid, "VmRSS")?;
    // "5" resets the peak resident size (proc(5)); older kernels refuse it.
    let hwm_reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();

    // The attempt for account j is attempt j × stride, spread over the burst.
    let stride = options
        .attempts
        .checked_div(options.accounts)
        .unwrap_or(u32::MAX);
    let start = Arc::new(Barrier::new(sources.len() + 1));
    let attempts: Vec<_> = sources
        .into_iter()
        .zip(0u32..)
        .map(|(source, i)| {
            let account = (i % stride == 0 && i / stride < options.accounts).then_some(i / stride);
            let email =
                account.map_or_else(|| format!("bench-unknown-{i}@example.test"), account_email);
            let (base, start) = (base.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                let client = client_from(source, timeout);
                start.wait().await;
                let response = client?
                    .post(format!("{base}/v1/auth:login"))
                    .json(&json!({ "email": email, "password": format!("wrong password {i}") }))
                    .send()
                    .await
                    .with_context(|| format!("attempt {i} from {source}"))?;
                anyhow::Ok(response.status().as_u16())
            })
        })
        .collect();

    let peak = Arc::new(AtomicU64::new(baseline));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (Arc::clone(&peak), Arc::clone(&done));
        let every = Duration::from_millis(options.sample_ms.max(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            while !done.load(Ordering::Relaxed) {
                ticks.tick().await;
                if let Ok(rss) = status_kib(pid, "VmRSS") {
                    peak.fetch_max(rss, Ordering::Relaxed);
                }
            }
        })
    };

    start.wait().await;
    let started = Instant::now();
    let mut refused = 0;
    let mut unexpected = std::collections::BTreeMap::<String, u32>::new();
    for attempt in attempts {
        match attempt.await.context("an attempt panicked")? {
            Ok(401) => refused += 1,
            Ok(status) => *unexpected.entry(status.to_string()).or_default() += 1,
            Err(err) => *unexpected.entry(format!("{err:#}")).or_default() += 1,
        }
    }
    let burst = started.elapsed();
    let at_end = status_kib(pid, "VmRSS")?;
    done.store(true, Ordering::Relaxed);
    sampler.await.context("the sampler panicked")?;
    peak.fetch_max(at_end, Ordering::Relaxed);
    let peak_hwm = if hwm_reset {
        Some(mib(status_kib(pid, "VmHWM")?))
    } else {
        None
    };
    let mut after = Vec::new();
    for second in [1, 3, 5] {
        tokio::time::sleep_until((started + burst + Duration::from_secs(second)).into()).await;
        after.push(mib(status_kib(pid, "VmRSS")?));
    }

    Ok(LoginsReport {
        attempts: options.attempts,
        for_accounts: options.accounts,
        refused,
        unexpected: unexpected
            .into_iter()
            .map(|(what, count)| format!("{what}: {count}"))
            .collect(),
        burst_s: round(burst.as_secs_f64(), 2),
        baseline_mib: mib(baseline),
        peak_sampled_mib: mib(peak.load(Ordering::Relaxed)),
        peak_hwm_mib: peak_hwm,
        at_end_mib: mib(at_end),
        after_1s_mib: after[0],
        after_3s_mib: after[1],
        after_5s_mib: after[2],
    })
}

/// Registers accounts 0 … `count - 1`, one after the other, each from an
/// address of 127.0.1.0/24 of its own (Register is throttled per address).
async fn register_accounts(base: &str, count: u32, timeout: Duration) -> anyhow::Result<()> {
    for index in 0..count {
        let source = loopback_plus(Ipv4Addr::new(127, 0, 1, 1), index)?;
        let response = client_from(source, timeout)?
            .post(format!("{base}/v1/auth:register"))
            .json(&json!({ "email": account_email(index), "password": ACCOUNT_PASSWORD }))
            .send()
            .await
            .with_context(|| format!("Register of account {index}"))?;
        if !response.status().is_success() {
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            bail!("Register of account {index} answered {status}: {body}");
        }
    }
    Ok(())
}
