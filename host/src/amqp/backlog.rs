//! The depth of the broker queues the routes read: every [`INTERVAL`], while the session is up,
//! a passive declare of each AMQP-source route's queue and its dead-letter queue tells how many
//! messages are ready there and how many consumers read it. `/metrics` reports the last reading
//! (`millrace_amqp_queue_messages`, `millrace_amqp_queue_consumers`, by plant, route, queue and
//! role `source` or `dead-letter`); a queue that cannot be read is left out.

use super::session::{BrokerLink, Link};
use crate::config::Source;
use crate::route::Routes;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Time between readings.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// (plant, route, queue, role) → (messages ready, consumers).
pub type Reading = BTreeMap<(String, String, String, &'static str), (u32, u32)>;

/// The last reading.
#[derive(Default)]
pub struct Backlog(Mutex<Reading>);

impl Backlog {
    pub fn get(&self) -> Reading {
        self.0.lock().expect("backlog lock").clone()
    }
}

/// Read the queues every [`INTERVAL`] until `stopped`.
pub async fn watch(
    backlog: Arc<Backlog>,
    link: Arc<BrokerLink>,
    routes: Arc<Routes>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => return,
        }
        let reading = match link.link() {
            // A reading never holds up the host's stop: the session's connection is closed
            // when the host stops, and a broker call pending on it may never complete.
            Link::Up(session) => tokio::select! {
                reading = tokio::time::timeout(INTERVAL, read(&session.connection, &routes)) => {
                    reading.unwrap_or_else(|_| Reading::new())
                }
                _ = stopped.changed() => return,
            },
            Link::Down { .. } => Reading::new(),
        };
        *backlog.0.lock().expect("backlog lock") = reading;
    }
}

async fn read(connection: &lapin::Connection, routes: &Routes) -> Reading {
    let mut reading = Reading::new();
    // A channel per reading: a passive declare of a missing queue closes its channel.
    let Ok(mut channel) = connection.create_channel().await else {
        return reading;
    };
    for route in routes.all().iter().filter(|r| r.source == Source::Amqp) {
        for (queue, role) in [
            (&route.amqp.queue, "source"),
            (&route.amqp.dead_letter, "dead-letter"),
        ] {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(q) => {
                    reading.insert(
                        (route.plant.clone(), route.name.clone(), queue.clone(), role),
                        (q.message_count(), q.consumer_count()),
                    );
                }
                Err(_) => match connection.create_channel().await {
                    Ok(fresh) => channel = fresh,
                    Err(_) => return reading,
                },
            }
        }
    }
    super::session::close_channel(&channel, "backlog read").await;
    reading
}
