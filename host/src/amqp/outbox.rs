//! The broker's outbox (`DATA_DIR/outbox.sqlite`; an entry's target is the exchange, its key
//! the routing key): drained in the order outputs were accepted whenever the broker is up, each
//! batch deleted only after the broker confirmed it. A host that dies between the confirm and the
//! delete publishes that batch again after its restart, with the same output ids.

use super::session::{BrokerLink, Link, RECONNECT_MAX, RECONNECT_MIN};
use crate::outbox::Outbox;
use crate::plugin::bindings::types::Message;
use tokio::sync::watch;

/// File name of the broker's outbox inside the data directory.
pub const FILE: &str = "outbox.sqlite";

/// Outputs published per batch (one confirm wait, one delete).
const BATCH: usize = 256;

/// Publish waiting outputs in order whenever the broker is up, until `shutdown` turns true.
/// Also picks up outputs another process (`millrace dlq replay`) put in the file.
pub async fn drain(outbox: &Outbox, link: &BrokerLink, mut shutdown: watch::Receiver<bool>) {
    let mut state = link.watch();
    let mut pause = RECONNECT_MIN;
    while !*shutdown.borrow() {
        let Link::Up(session) = state.borrow_and_update().clone() else {
            tokio::select! {
                _ = state.changed() => continue,
                _ = shutdown.changed() => break,
            }
        };
        let batch = match tokio::task::block_in_place(|| outbox.oldest(BATCH)) {
            Ok(batch) => batch,
            Err(e) => {
                tracing::error!(error = %e, "outbox unreadable");
                Vec::new()
            }
        };
        let Some(last) = batch.last().map(|w| w.seq) else {
            // Nothing waits: sleep until a put, a state change, or a look at the file.
            tokio::select! {
                () = outbox.idle() => {}
                _ = state.changed() => {}
                _ = shutdown.changed() => break,
            }
            continue;
        };
        let items: Vec<(&str, &str, &str, &Message)> = batch
            .iter()
            .map(|w| {
                (
                    w.target.as_str(),
                    w.key.as_str(),
                    w.lineage.as_str(),
                    &w.output,
                )
            })
            .collect();
        let sent = session.publisher.publish_each(&items).await;
        match sent {
            Ok(n) => {
                pause = RECONNECT_MIN;
                tracing::debug!(published = n, "outbox batch confirmed");
                if let Err(e) = tokio::task::block_in_place(|| outbox.remove_through(last)) {
                    tracing::error!(error = %e, "outbox: confirmed outputs could not be removed; they will be published again");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, waiting = outbox.held(), "outbox: publishing failed; kept for the next try");
                if e.channel_lost() {
                    session.lost(format!("outbox publishing failed: {e}"));
                }
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => break,
                }
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
}
