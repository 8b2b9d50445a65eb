//! The one writer of the request log: batches records from a bounded queue into SQLite
//! transactions, flushes on size or interval, applies retention, and flushes on close.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use super::{LogSender, RequestRecord, Store, StoreError};
use crate::config::RequestLogConfig;
use crate::observation::unix_ms_now;

/// What the writer thread receives.
#[derive(Debug)]
pub(super) enum Msg {
    Record(Box<RequestRecord>),
    /// An incident event (written at once: they are rare).
    Incident(Box<crate::incident::Event>),
    /// Flush what is queued, then stop.
    Close,
}

/// The writer's half: run it on its own thread with [`Writer::run`].
#[derive(Debug)]
pub struct Writer {
    store: Store,
    rx: Receiver<Msg>,
    config: RequestLogConfig,
    close: SyncSender<Msg>,
}

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

impl Writer {
    /// Opens the database and returns the writer and the request path's sender.
    pub fn open(config: &RequestLogConfig) -> Result<(Writer, LogSender), StoreError> {
        let store = Store::open(&config.path)?;
        let (tx, rx) = sync_channel(config.queue);
        let sender = LogSender {
            tx: tx.clone(),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        Ok((
            Writer {
                store,
                rx,
                config: config.clone(),
                close: tx,
            },
            sender,
        ))
    }

    /// A handle that asks the writer to flush and stop.
    pub fn closer(&self) -> Closer {
        Closer(self.close.clone())
    }

    /// Writes until closed. Blocking: run on a dedicated thread.
    pub fn run(mut self) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(self.config.batch_size);
        let mut last_retention = std::time::UNIX_EPOCH;
        loop {
            let first = match self.rx.recv_timeout(RETENTION_EVERY) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut closing = false;
            match first {
                Some(Msg::Record(r)) => batch.push(*r),
                Some(Msg::Incident(e)) => self.incident(&e),
                Some(Msg::Close) => closing = true,
                None => {}
            }
            // Gather more for up to flush_interval, or until the batch is full.
            let deadline = std::time::SystemTime::now() + self.config.flush_interval;
            while !closing && !batch.is_empty() && batch.len() < self.config.batch_size {
                let left = deadline
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                match self.rx.recv_timeout(left) {
                    Ok(Msg::Record(r)) => batch.push(*r),
                    Ok(Msg::Incident(e)) => self.incident(&e),
                    Ok(Msg::Close) => closing = true,
                    Err(_) => break,
                }
            }
            if closing {
                // Take whatever is still queued behind the close request.
                while let Ok(m) = self.rx.try_recv() {
                    match m {
                        Msg::Record(r) => batch.push(*r),
                        Msg::Incident(e) => self.incident(&e),
                        Msg::Close => {}
                    }
                }
            }
            if !batch.is_empty() {
                if let Err(error) = self.store.insert(&batch) {
                    tracing::error!(%error, rows = batch.len(), "request log write failed; rows lost");
                }
                batch.clear();
            }
            let now = std::time::SystemTime::now();
            if now
                .duration_since(last_retention)
                .is_ok_and(|d| d >= RETENTION_EVERY)
            {
                last_retention = now;
                let cutoff = unix_ms_now()
                    - i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
                match self.store.delete_before(cutoff) {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(rows = n, "request log retention removed old rows"),
                    Err(error) => tracing::warn!(%error, "request log retention failed"),
                }
            }
            if closing {
                return Ok(());
            }
        }
    }
}

impl Writer {
    fn incident(&mut self, e: &crate::incident::Event) {
        if let Err(error) = self.store.write_incident(e) {
            tracing::error!(%error, incident = %e.incident.id, "incident write failed");
        }
    }
}

/// Asks the writer to flush and stop.
#[derive(Debug, Clone)]
pub struct Closer(SyncSender<Msg>);

impl Closer {
    /// Sends the close request (waits for queue space: shutdown may block briefly).
    pub fn close(&self) {
        let _ = self.0.send(Msg::Close);
    }
}
