//! Webhooks: new-bug and comment events posted as JSON to every configured URL.
//!
//! Invariant: ingest never waits on a webhook. Events go through a bounded queue
//! (`queue_len_max`) to one sender thread; a full queue drops the event (logged, counted);
//! each POST has a timeout; a failure is logged and counted, never retried forever.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::recording::metrics::Metrics;

/// Webhooks: `[webhooks]` of the configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// URLs every event is posted to.
    pub urls: Vec<String>,
    /// Time allowed for one POST.
    pub timeout_ms: u64,
    /// Events waiting to be sent; more are dropped (and logged).
    pub queue_len_max: usize,
}

impl Default for WebhookConfig {
    fn default() -> WebhookConfig {
        WebhookConfig {
            urls: Vec::new(),
            timeout_ms: 5000,
            queue_len_max: 1024,
        }
    }
}

/// One event.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// `new_bug`, `comment` or `regression`.
    pub event: &'static str,
    pub bug_id: u64,
    pub bug_url: String,
    pub status: String,
    pub problem_id: String,
    pub signature: String,
    pub kind: String,
    pub reason: String,
    /// What the comment says (the opening comment for `new_bug`).
    pub text: String,
    pub time_ms: u64,
}

/// Hands events to the sender thread.
#[derive(Clone)]
pub struct Webhooks {
    sender: Option<SyncSender<Event>>,
    metrics: Arc<Metrics>,
}

impl Webhooks {
    /// Starts the sender thread when there are URLs.
    pub fn start(config: &WebhookConfig, metrics: Arc<Metrics>) -> Webhooks {
        if config.urls.is_empty() {
            return Webhooks {
                sender: None,
                metrics,
            };
        }
        let (sender, receiver) = sync_channel(config.queue_len_max.max(1));
        let urls = config.urls.clone();
        let timeout = Duration::from_millis(config.timeout_ms.max(1));
        let thread_metrics = metrics.clone();
        std::thread::Builder::new()
            .name("webhooks".into())
            .spawn(move || send_loop(receiver, urls, timeout, thread_metrics))
            .expect("spawn the webhook thread");
        Webhooks {
            sender: Some(sender),
            metrics,
        }
    }

    /// Queues an event without waiting.
    pub fn send(&self, event: Event) {
        let Some(sender) = &self.sender else { return };
        match sender.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(event)) => {
                Metrics::add(&self.metrics.webhooks_dropped, 1);
                tracing::warn!(
                    event = event.event,
                    bug = event.bug_id,
                    "webhook queue full; event dropped"
                );
            }
            Err(TrySendError::Disconnected(_)) => {
                Metrics::add(&self.metrics.webhooks_dropped, 1);
            }
        }
    }
}

fn send_loop(
    receiver: Receiver<Event>,
    urls: Vec<String>,
    timeout: Duration,
    metrics: Arc<Metrics>,
) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(true)
        .build()
        .into();
    while let Ok(event) = receiver.recv() {
        for url in &urls {
            match agent.post(url).send_json(&event) {
                Ok(_) => Metrics::add(&metrics.webhooks_sent, 1),
                Err(error) => {
                    Metrics::add(&metrics.webhooks_failed, 1);
                    tracing::warn!(%url, %error, event = event.event, bug = event.bug_id, "webhook failed");
                }
            }
        }
    }
}
