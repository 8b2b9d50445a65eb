//! The one writer of the request log: takes the records queued every flush interval (without
//! being woken by each), writes them in SQLite transactions of at most `batch_size` rows,
//! writes incident events as they come, applies retention, and flushes on close.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::time::Duration;

use super::{LogSender, LogStatus, RequestRecord, Store, StoreError};
use crate::config::RequestLogConfig;
use crate::observation::unix_ms_now;

/// What the writer thread is told besides records: rare, so it waits on these (and is woken
/// by each) while records pile up in their own queue without waking it.
#[derive(Debug)]
pub(super) enum Control {
    /// An incident event (written at once).
    Incident(Box<crate::incident::Event>),
    /// Flush what is queued, then stop.
    Close,
}

/// The writer's half: run it on its own thread with [`Writer::run`].
#[derive(Debug)]
pub struct Writer {
    store: Store,
    records: Receiver<Box<RequestRecord>>,
    control: Receiver<Control>,
    config: RequestLogConfig,
    close: SyncSender<Control>,
    status: Arc<LogStatus>,
}

/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Incident events and the close request that may wait for the writer.
const CONTROL_QUEUE: usize = 1024;

impl Writer {
    /// Opens the database and returns the writer and the request path's sender.
    pub fn open(config: &RequestLogConfig) -> Result<(Writer, LogSender), StoreError> {
        let store = Store::open(&config.path)?;
        let (records_tx, records) = sync_channel(config.queue);
        let (control_tx, control) = sync_channel(CONTROL_QUEUE);
        let sender = LogSender {
            records: records_tx,
            control: control_tx.clone(),
            status: Arc::new(LogStatus::default()),
        };
        Ok((
            Writer {
                store,
                records,
                control,
                config: config.clone(),
                close: control_tx,
                status: sender.status(),
            },
            sender,
        ))
    }

    /// A handle that asks the writer to flush and stop.
    pub fn closer(&self) -> Closer {
        Closer(self.close.clone())
    }

    /// Writes until closed. Blocking: run on a dedicated thread.
    ///
    /// The writer never waits on the record queue: a receiver blocked there is woken (a futex
    /// call and a context switch) by every record the request path sends. It waits on the
    /// control queue for at most a flush interval instead, then takes every record queued —
    /// one wake per batch, and incidents still written the moment they arrive.
    pub fn run(mut self) -> Result<(), StoreError> {
        let mut batch = Vec::with_capacity(self.config.batch_size);
        let mut last_retention = std::time::UNIX_EPOCH;
        loop {
            let mut closing = false;
            let mut next = match self.control.recv_timeout(self.config.flush_interval) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    closing = true;
                    None
                }
            };
            while let Some(c) = next {
                match c {
                    Control::Incident(e) => self.incident(&e),
                    Control::Close => closing = true,
                }
                next = self.control.try_recv().ok();
            }
            while batch.len() < self.config.queue || closing {
                match self.records.try_recv() {
                    Ok(r) => batch.push(*r),
                    Err(_) => break,
                }
            }
            for rows in batch.chunks(self.config.batch_size) {
                match self.store.insert(rows) {
                    Ok(()) => self.status.write_ok(),
                    Err(error) => {
                        self.status.write_failed(rows.len(), unix_ms_now());
                        tracing::error!(%error, rows = rows.len(), "request log write failed; rows lost");
                    }
                }
            }
            batch.clear();
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
pub struct Closer(SyncSender<Control>);

impl Closer {
    /// Sends the close request (waits for queue space: shutdown may block briefly).
    pub fn close(&self) {
        let _ = self.0.send(Control::Close);
    }
}
