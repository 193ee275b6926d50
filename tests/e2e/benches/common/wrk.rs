//! wrk runs and their figures, shared by the benches that load a server with it.

use std::path::Path;
use std::process::Command;

/// Requests/s, p50 and p99 in ms, and failed answers of one wrk run.
#[derive(Clone, Copy)]
pub struct Figures {
    pub rate: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// How wrk loads: threads, connections, seconds.
#[derive(Clone, Copy)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub seconds: u32,
}

/// One `wrk --latency` run of `load` against `url`, with `extra` arguments (`-s script`, `-H`).
pub fn wrk(bin: &Path, url: &str, load: Load, extra: &[String]) -> Figures {
    let out = Command::new(bin)
        .args([
            &format!("-t{}", load.threads),
            &format!("-c{}", load.connections),
            &format!("-d{}s", load.seconds),
            "--latency",
        ])
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "wrk failed: {text}");
    let value = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(prefix))
            .map(|v| v.trim().to_owned())
    };
    let rate = value("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in wrk's output:\n{text}"));
    let p50 = value("50%").unwrap_or_else(|| panic!("no 50% latency in wrk's output:\n{text}"));
    let p99 = value("99%").unwrap_or_else(|| panic!("no 99% latency in wrk's output:\n{text}"));
    let errors = value("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
        + value("Socket errors:").map_or(0, |v| {
            // "connect 0, read 0, write 0, timeout 0"
            v.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        });
    Figures {
        rate,
        p50_ms: duration_ms(&p50),
        p99_ms: duration_ms(&p99),
        errors,
    }
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`, `1.00m`.
pub fn duration_ms(text: &str) -> f64 {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: f64 = number.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => f64::NAN,
    }
}

pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The median of each figure over the rounds; errors summed.
pub fn medians(runs: &[Figures]) -> Figures {
    Figures {
        rate: median(runs.iter().map(|f| f.rate).collect()),
        p50_ms: median(runs.iter().map(|f| f.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|f| f.p99_ms).collect()),
        errors: runs.iter().map(|f| f.errors).sum(),
    }
}
