//! When a model runs: every `poll_interval_ms` (down to 1 ms), or at the times of its `cron`
//! expression; and at once on `POST /run/<model>` (for "dbt job finished" hooks) or on a
//! PostgreSQL `NOTIFY <notify_channel>`.
//!
//! A wake-up that arrives while a run is in progress is remembered (one permit), so the model
//! runs again right after: a change announced during a run is never left for the next interval.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use sluice_core::config::{Config, ModelConfig};
use sluice_warehouse::{AnyWarehouse, ChangeNotifications as _};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// A model's wake-up handle, shared by the HTTP endpoint and the NOTIFY listener.
#[derive(Default)]
pub struct Wakers {
    by_model: HashMap<String, Arc<Notify>>,
}

impl Wakers {
    pub fn new(models: &[String]) -> Wakers {
        Wakers { by_model: models.iter().map(|m| (m.clone(), Arc::new(Notify::new()))).collect() }
    }

    /// The handle of `model` (a fresh one for a model not polled here).
    pub fn get(&self, model: &str) -> Arc<Notify> {
        self.by_model.get(model).cloned().unwrap_or_default()
    }

    /// Start a run of `model` now; false when this poller does not poll it.
    pub fn wake(&self, model: &str, source: &'static str) -> bool {
        let Some(waker) = self.by_model.get(model) else { return false };
        waker.notify_one();
        metrics::counter!("sluice_poller_wakeups_total", "model" => model.to_string(), "source" => source).increment(1);
        tracing::info!(model = %model, source, "run requested");
        true
    }
}

/// How one model waits between runs.
#[derive(Clone)]
pub struct Schedule {
    interval: Duration,
    cron: Option<croner::Cron>,
    waker: Arc<Notify>,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule { interval: Duration::from_secs(1), cron: None, waker: Arc::new(Notify::new()) }
    }
}

/// A cron expression that does not parse: the model cannot be scheduled.
#[derive(Debug, thiserror::Error)]
#[error("model {model}: cron expression {expression:?} is invalid: {reason}. Fix: use 5 fields (min hour day month weekday) or 6 with seconds first, e.g. \"0 */15 * * * *\"")]
pub struct CronError {
    pub model: String,
    pub expression: String,
    pub reason: String,
}

impl Schedule {
    pub fn for_model(model: &ModelConfig, waker: Arc<Notify>) -> Result<Schedule, CronError> {
        // The config's own parse of it: the validation at load accepted exactly what runs here.
        let cron = model.cron_schedule().map_err(|reason| CronError {
            model: model.name.get_ref().clone(),
            expression: model.cron.clone().unwrap_or_default(),
            reason,
        })?;
        Ok(Schedule { interval: Duration::from_millis(model.poll_interval_ms), cron, waker })
    }

    /// How often runs are due: the interval, or for a cron expression the gap between its next
    /// two times (the interval when it has none). What freshness is judged against.
    pub fn expected_interval(&self) -> Duration {
        let Some(cron) = &self.cron else { return self.interval };
        let now = chrono::Utc::now();
        let next = cron.find_next_occurrence(&now, false).ok();
        let after = next.and_then(|next| cron.find_next_occurrence(&next, false).ok().map(|after| (after - next).to_std().ok()));
        after.flatten().unwrap_or(self.interval)
    }

    /// Wait until the next run is due or requested. Returns false on shutdown.
    pub async fn wait(&self, shutdown: &CancellationToken) -> bool {
        let delay = match &self.cron {
            Some(cron) => {
                let now = chrono::Utc::now();
                cron.find_next_occurrence(&now, false).ok().and_then(|next| (next - now).to_std().ok()).unwrap_or(self.interval)
            }
            None => self.interval,
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = self.waker.notified() => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

async fn run_now(State(wakers): State<Arc<Wakers>>, Path(model): Path<String>) -> (StatusCode, String) {
    if wakers.wake(&model, "http") {
        (StatusCode::ACCEPTED, format!("run of {model} requested\n"))
    } else {
        (StatusCode::NOT_FOUND, format!("this poller does not poll a model named {model:?}\n"))
    }
}

/// Serve `POST /run/<model>` on `addr` until shutdown; returns the bound address.
pub async fn serve_http(addr: SocketAddr, wakers: Arc<Wakers>, shutdown: CancellationToken) -> std::io::Result<SocketAddr> {
    let app = Router::new().route("/run/{model}", post(run_now)).with_state(wakers);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
        if let Err(error) = served {
            tracing::error!(%error, "run-now endpoint stopped");
        }
    });
    tracing::info!(addr = %bound, "run-now endpoint listening (POST /run/<model>)");
    Ok(bound)
}

/// Wake each model on every notification on its `notify_channel`, until shutdown. The warehouse
/// listens ([`ChangeNotifications`]: it reconnects on its own after a drop, and a missed
/// notification only delays a run to the next interval; it loses nothing); this only maps
/// channels to models.
pub fn spawn_notify_listener(config: &Config, models: &[String], warehouse: &AnyWarehouse, wakers: Arc<Wakers>, shutdown: CancellationToken) {
    let mut channels: HashMap<String, Vec<String>> = HashMap::new();
    for model in models {
        if let Some(channel) = config.model(model).and_then(|m| m.notify_channel.clone()) {
            channels.entry(channel).or_default().push(model.clone());
        }
    }
    if channels.is_empty() {
        return;
    }
    let listened: Vec<String> = channels.keys().cloned().collect();
    let Some(mut notifications) = warehouse.notifications(&listened) else {
        unreachable!("validated: notify_channel needs a warehouse that can notify")
    };
    tokio::spawn(async move {
        use futures::StreamExt as _;
        loop {
            tokio::select! {
                channel = notifications.next() => match channel {
                    Some(channel) => {
                        for model in channels.get(&channel).into_iter().flatten() {
                            wakers.wake(model, "notify");
                        }
                    }
                    None => break,
                },
                // Dropping the stream stops the warehouse's listener.
                _ = shutdown.cancelled() => break,
            }
        }
    });
}
