//! `millrace dlq replay` of a route that consumes a queue: its dead letters wait in the broker's
//! dead-letter queue, and a replay sends them back to the source queue for the running host.

use crate::config::Config;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use lapin::options::{BasicAckOptions, BasicGetOptions};

/// `dlq replay` of route `route`, which consumes a queue: its dead letters wait in the broker's
/// dead-letter queue. A replay takes up to `limit` of them and sends each back to the source
/// queue (failure headers dropped, replay count raised), confirmed before the dead letter is
/// acknowledged; the running host mediates them with its current chain. A dry run runs the
/// current chain here, shows the outputs, and leaves every dead letter in its queue.
pub fn replay(
    config: &Config,
    route: &Route,
    limit: u32,
    dry_run: bool,
    show: &dyn Fn(&str, &[Message]),
) -> Result<i32, String> {
    if config.amqp.is_empty() {
        return Err(format!(
            "route {} consumes a queue but host.amqp is not set",
            route.name
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let (connection, at) = super::session::open_any(
            &config.amqp,
            0,
            &config.amqp_tls,
            "millrace dlq replay",
            &super::session::Attempts::default(),
        )
        .await?;
        let connection = std::sync::Arc::new(connection);
        let url = &config.amqp[at];
        let broker = |e: lapin::Error| format!("broker {}: {e}", super::session::redact(url));
        let publisher = super::publisher::AmqpPublisher::open(&connection, config.amqp_publishing)
            .await
            .map_err(broker)?;
        let channel = connection.create_channel().await.map_err(broker)?;
        let queue = route.amqp.dead_letter.as_str();
        let mut taken = Vec::new();
        while taken.len() < limit as usize {
            match channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(broker)?
            {
                Some(got) => taken.push(got.delivery),
                None => break,
            }
        }
        if taken.is_empty() {
            println!("no dead letters wait in {queue}");
            return Ok(0);
        }
        let (mut replayed, mut failed) = (0, 0);
        for delivery in &taken {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            let why = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| super::publisher::header_string(h, "x-millrace-reason"))
                .unwrap_or_default();
            let label = format!("dead letter {id:?} ({why})");
            if dry_run {
                let message =
                    super::source::message_of(route, &id, &delivery.properties, &delivery.data);
                // On a thread of its own, as the host runs chains: a WASI step's host calls
                // block on a runtime of their own, which they cannot do inside this one.
                let ran = std::thread::scope(|scope| {
                    scope
                        .spawn(|| crate::pipeline::chain::run(route, &message, None))
                        .join()
                });
                let Ok(ran) = ran else {
                    failed += 1;
                    println!("{label}: the dry run of its chain panicked");
                    continue;
                };
                match ran {
                    Ok(outputs) => show(&label, &outputs),
                    Err(failure) => {
                        failed += 1;
                        println!(
                            "{label}: still fails at step {} ({}@{}): {}",
                            failure.step,
                            failure.plugin.name,
                            failure.plugin.version,
                            failure.reason()
                        );
                    }
                }
                continue;
            }
            match publisher
                .reinject(route, &delivery.data, &delivery.properties)
                .await
            {
                Ok(n) => {
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(broker)?;
                    crate::lineage::record(route, &id, None, || crate::lineage::Event::Replayed {
                        dead_letter: None,
                        by: "millrace dlq replay".into(),
                    });
                    replayed += 1;
                    println!("{label}: sent back to {} (replay {n})", route.amqp.queue);
                }
                Err(e) => {
                    failed += 1;
                    println!("{label}: not sent back: {e}");
                }
            }
        }
        // Unacknowledged dead letters (a dry run's, failed ones) return to their queue.
        super::session::close_channel(&channel, "replay done").await;
        super::session::close_connection(&connection, "replay done").await;
        if dry_run {
            println!(
                "dry run: {} of {} would deliver; every dead letter stays in {queue}",
                taken.len() - failed,
                taken.len()
            );
            return Ok(0);
        }
        println!(
            "{replayed} replayed into {}, {failed} still waiting",
            route.amqp.queue
        );
        Ok(i32::from(failed > 0))
    })
}
