//! The audit log: adapters hand over one `AuditRecord` per audited request (`AuditLog::record`);
//! a writer task stores them in batches; a prune loop removes what is older than the
//! retention (`UPDRAFT_AUDIT_RETENTION_DAYS`).
//!
//! Nothing is dropped quietly. The queue is bounded: when the writer falls behind (a slow or
//! unavailable database), the requests that add records wait (back-pressure), for at most
//! `ENQUEUE_WAIT`; only then is a record given up, counted in
//! `updraft_audit_records_lost_total` and logged with what it held. At shutdown the writer
//! stops last: requests are drained first, then it writes what is queued.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, watch};

use super::Core;
use crate::config::AuditSettings;
use crate::domain::Result;
use crate::domain::audit::{AuditFilter, AuditRecord};
use crate::storage::{AuditCursor, Store};

/// Records the queue holds before the requests that add more wait.
pub const QUEUE_LEN: usize = 4096;
/// Most records written in one statement.
pub const BATCH_LEN: usize = 256;
/// How long a request waits for room in a full queue before its record is given up.
pub const ENQUEUE_WAIT: Duration = Duration::from_secs(10);
/// Records deleted per statement by the prune loop.
pub const PRUNE_BATCH: u32 = 1000;
/// How often the prune loop runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Records read per query by the export.
pub const EXPORT_BATCH: u32 = 500;

/// The queue between the requests and the writer, with the counts that let a reader wait
/// for what was queued before it (`flush`).
pub struct AuditLog {
    sender: mpsc::Sender<AuditRecord>,
    receiver: Mutex<Option<mpsc::Receiver<AuditRecord>>>,
    /// Records queued so far.
    queued: AtomicU64,
    /// Records the writer is done with (written, or given up and counted), in queue order.
    handled: watch::Sender<u64>,
    pub settings: AuditSettings,
}

impl AuditLog {
    pub fn new(settings: AuditSettings) -> AuditLog {
        let (sender, receiver) = mpsc::channel(QUEUE_LEN);
        AuditLog { sender, receiver: Mutex::new(Some(receiver)), queued: AtomicU64::new(0), handled: watch::channel(0).0, settings }
    }

    /// Queues a record; waits while the queue is full (see the module documentation). When
    /// the writer is gone (after shutdown), the record is written at once.
    pub async fn record(&self, store: &Store, record: AuditRecord) {
        let record = match self.sender.try_send(record) {
            Ok(()) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                return;
            }
            Err(mpsc::error::TrySendError::Full(record)) => {
                metrics::counter!("updraft_audit_queue_full_total").increment(1);
                match tokio::time::timeout(ENQUEUE_WAIT, self.sender.reserve()).await {
                    Ok(Ok(permit)) => {
                        permit.send(record);
                        self.queued.fetch_add(1, Ordering::AcqRel);
                        return;
                    }
                    Ok(Err(_closed)) => record,
                    Err(_elapsed) => {
                        lost(&record, "the audit queue stayed full");
                        return;
                    }
                }
            }
            Err(mpsc::error::TrySendError::Closed(record)) => record,
        };
        if let Err(e) = store.insert_audit_records(std::slice::from_ref(&record)).await {
            lost(&record, &format!("the writer is stopped and a direct write failed: {e}"));
        }
    }

    /// Waits (up to `wait`) until every record queued before this call is stored, so that a
    /// client reads its own actions back from this replica.
    pub async fn flush(&self, wait: Duration) {
        let target = self.queued.load(Ordering::Acquire);
        let mut handled = self.handled.subscribe();
        let _ = tokio::time::timeout(wait, handled.wait_for(|n| *n >= target)).await;
    }

    fn handled(&self, n: usize) {
        self.handled.send_modify(|count| *count += n as u64);
    }
}

/// Counts and logs a record that could not be stored (never its note, which a handler wrote).
fn lost(record: &AuditRecord, why: &str) {
    metrics::counter!("updraft_audit_records_lost_total").increment(1);
    tracing::error!(
        actor = %record.actor, action = %record.action, target = %record.target, ip = %record.ip,
        status = record.status, request_id = record.request_id.as_deref().unwrap_or(""),
        "audit record lost: {why}"
    );
}

/// Starts the writer (it drains the queue when the server stops) and the prune loop.
pub fn spawn_background(core: Core) {
    let Some(receiver) = core.audit.receiver.lock().expect("audit receiver lock").take() else {
        return;
    };
    let stopping = core.tasks.cancelled();
    core.tasks.spawn_until_done("audit writer", write_records(core.clone(), receiver, stopping));
    let pruner = core.clone();
    core.tasks.spawn("audit prune", async move {
        loop {
            if let Err(e) = prune(&pruner, chrono::Utc::now()).await {
                tracing::warn!(error = %e, "cannot prune the audit log");
            }
            tokio::time::sleep(PRUNE_EVERY).await;
        }
    });
}

/// The writer: a batch of what is queued at a time, retried while the database fails; on
/// stop, what is still queued.
async fn write_records(core: Core, mut receiver: mpsc::Receiver<AuditRecord>, stopping: impl std::future::Future<Output = ()>) {
    let mut stopping = std::pin::pin!(stopping);
    let mut batch = Vec::with_capacity(BATCH_LEN);
    loop {
        let first = tokio::select! {
            record = receiver.recv() => record,
            () = &mut stopping => None,
        };
        let Some(first) = first else { break };
        batch.push(first);
        while batch.len() < BATCH_LEN {
            match receiver.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        write_batch(&core, &mut batch, false).await;
    }
    receiver.close();
    while let Some(record) = receiver.recv().await {
        batch.push(record);
        if batch.len() == BATCH_LEN {
            write_batch(&core, &mut batch, true).await;
        }
    }
    write_batch(&core, &mut batch, true).await;
}

/// Writes `batch` (emptying it): retried with growing pauses while the server runs; when a
/// batch still fails after `ATTEMPTS`, or once stopping, record by record, so that one bad
/// record cannot hold the others back; what still fails is counted as lost.
async fn write_batch(core: &Core, batch: &mut Vec<AuditRecord>, stopping: bool) {
    const ATTEMPTS: u32 = 8;
    if batch.is_empty() {
        return;
    }
    let mut pause = Duration::from_millis(100);
    let attempts = if stopping { 1 } else { ATTEMPTS };
    for attempt in 1..=attempts {
        match core.store.insert_audit_records(batch).await {
            Ok(()) => {
                metrics::counter!("updraft_audit_records_total").increment(batch.len() as u64);
                core.audit.handled(batch.len());
                batch.clear();
                return;
            }
            Err(e) => {
                metrics::counter!("updraft_audit_write_failures_total").increment(1);
                tracing::warn!(error = %e, records = batch.len(), attempt, "cannot write audit records; retrying");
                if attempt < attempts {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
    for record in batch.drain(..) {
        match core.store.insert_audit_records(std::slice::from_ref(&record)).await {
            Ok(()) => metrics::counter!("updraft_audit_records_total").increment(1),
            Err(e) => lost(&record, &format!("the database refused it: {e}")),
        }
        core.audit.handled(1);
    }
}

/// Deletes the records older than the retention, in batches; returns how many went.
pub async fn prune(core: &Core, now: chrono::DateTime<chrono::Utc>) -> Result<u64> {
    let retention = chrono::Duration::from_std(core.audit.settings.retention).unwrap_or(chrono::Duration::MAX);
    let before = now.checked_sub_signed(retention).map_or(i64::MIN, |t| t.timestamp_millis());
    let mut pruned = 0;
    loop {
        let deleted = core.store.prune_audit_records(before, PRUNE_BATCH).await?;
        pruned += deleted;
        if deleted < u64::from(PRUNE_BATCH) {
            break;
        }
        tokio::task::yield_now().await;
    }
    if pruned > 0 {
        tracing::info!(pruned, "audit records older than the retention removed");
    }
    Ok(pruned)
}

/// A page of records, newest first, with the total; what this replica queued before is
/// stored first.
pub async fn list(core: &Core, filter: &AuditFilter, limit: u32, offset: u64) -> Result<(Vec<AuditRecord>, u64)> {
    core.audit.flush(Duration::from_secs(5)).await;
    core.store.list_audit_records(filter, limit, offset).await
}

/// Every record matching `filter`, oldest first, as a stream of batches read one at a time
/// (the export never holds more than one batch).
pub async fn export(core: &Core, filter: AuditFilter) -> impl Stream<Item = Result<Vec<AuditRecord>>> + Send + 'static {
    core.audit.flush(Duration::from_secs(5)).await;
    let store = core.store.clone();
    futures::stream::unfold(Some(None::<AuditCursor>), move |cursor| {
        let store = store.clone();
        let filter = filter.clone();
        async move {
            let cursor = cursor?;
            match store.audit_records_after(&filter, cursor.as_ref(), EXPORT_BATCH).await {
                Ok(records) if records.is_empty() => None,
                Ok(records) => {
                    let next = (records.len() == EXPORT_BATCH as usize)
                        .then(|| records.last().map(|r| (r.at.timestamp_millis(), r.id.clone())))
                        .flatten();
                    Some((Ok(records), next.map(Some)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}
