//! `bench-suppression`: how long a buyer stays targetable after buying (issue 5).
//!
//! Purchases are committed in PostgreSQL at a steady rate; for each, the time from the commit
//! (when the autocommit `INSERT` returned) to the *last* of three acknowledgements: Meta removed
//! the buyer from the prospecting audience, Redis holds them in the suppression set, Braze
//! unsubscribed them. The pipeline, its configuration and how each acknowledgement is observed
//! are [`sluice_integration_tests::suppression`]'s (shared with the correctness test
//! `tests/it/suppression.rs`). Measuring starts after a warm-up purchase went through, so the
//! figures are steady state, not consumer-group joins.
//!
//! Prints p50/p90/p99/max overall and per destination, plus how much of it is the wait for the
//! poller's next run (commit → the event's `ts_ms`), and the config. Exits 1 when p99 exceeds the
//! 2 s target, a purchase never arrived, or anything was dead-lettered.
//!
//! Environment: `SLUICE_BENCH_PURCHASES` (default 200), `SLUICE_BENCH_RATE` (purchases per
//! second, default 20), `SLUICE_BENCH_POLL_MS` (default 500), `SLUICE_BENCH_LINGER_MS` (each
//! destination's `batch_linger_ms`, default 20). Run with `ops/bench-suppression.sh`.

use std::time::{Duration, Instant};

use sluice_integration_tests::suppression::{percentile, Acks, Purchase, Scenario, Settings, DESTINATIONS};

const TARGET_P99: Duration = Duration::from_secs(2);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn row(label: &str, mut values: Vec<Duration>) -> String {
    values.sort();
    format!(
        "{label:<38} {:>9} {:>9} {:>9} {:>9}",
        ms(percentile(&values, 50.0)),
        ms(percentile(&values, 90.0)),
        ms(percentile(&values, 99.0)),
        ms(*values.last().expect("values")),
    )
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let purchases_total = env_u64("SLUICE_BENCH_PURCHASES", 200) as i64;
    let rate = env_u64("SLUICE_BENCH_RATE", 20).max(1);
    let settings = Settings {
        poll_interval_ms: env_u64("SLUICE_BENCH_POLL_MS", 500),
        linger_ms: env_u64("SLUICE_BENCH_LINGER_MS", 20),
        buyers: purchases_total as usize,
    };
    println!("bench-suppression: starting the poller and three sinks (warm-up purchase first)");
    let started = Instant::now();
    let scenario = Scenario::start(settings.clone()).await;
    println!("warmed up in {}; committing {purchases_total} purchases at {rate}/s", ms(started.elapsed()));

    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut purchases: Vec<Purchase> = Vec::with_capacity(purchases_total as usize);
    for id in 1..=purchases_total {
        tick.tick().await;
        purchases.push(scenario.purchase(id).await);
    }
    let result = scenario.wait_for(&purchases, Duration::from_secs(60)).await;
    let config_text = scenario.config_text().to_string();
    let outcome = scenario.finish().await;

    println!("\n--- configuration ---\n{config_text}");
    let acks: Vec<Acks> = match result {
        Ok(acks) => acks,
        Err(missing) => {
            eprintln!("FAILED: {} purchases not acknowledged by every destination within 60 s: {missing:?}", missing.len());
            std::process::exit(1);
        }
    };
    let last: Vec<Duration> = purchases.iter().zip(&acks).map(|(p, a)| a.last() - p.committed).collect();
    println!("--- {purchases_total} purchases at {rate}/s, poll_interval_ms = {}, batch_linger_ms = {} ---", settings.poll_interval_ms, settings.linger_ms);
    println!("{:<38} {:>9} {:>9} {:>9} {:>9}", "warehouse commit ->", "p50", "p90", "p99", "max");
    println!("{}", row("last destination's ack (the figure)", last.clone()));
    for (i, name) in DESTINATIONS.iter().enumerate() {
        let each: Vec<Duration> = purchases.iter().zip(&acks).map(|(p, a)| a.each()[i] - p.committed).collect();
        println!("{}", row(&format!("  {name}"), each));
    }
    let read: Vec<Duration> = purchases
        .iter()
        .filter_map(|p| outcome.read_at_ms.get(&p.id).map(|&at| Duration::from_millis((at - p.committed_wall_ms).max(0) as u64)))
        .collect();
    if !read.is_empty() {
        println!("{}", row("  read by the poller (event ts_ms)", read));
    }
    let mut sorted = last;
    sorted.sort();
    let p99 = percentile(&sorted, 99.0);
    let dead: usize = outcome.dead_letters.iter().map(|(_, n)| n).sum();
    println!("dead letters: {:?}", outcome.dead_letters);
    println!("target p99 <= {}: {} (p99 {})", ms(TARGET_P99), if p99 <= TARGET_P99 { "met" } else { "MISSED" }, ms(p99));
    if p99 > TARGET_P99 || dead > 0 {
        std::process::exit(1);
    }
}
