//! The MQTT 5 session (rumqttc): one connection per host, clean start off with a session expiry,
//! so QoS 1/2 messages published while the host is away wait at the broker and arrive on
//! reconnect. Incoming publishes are handed to the source with a settle handle; their PUBACK
//! (PUBREC for QoS 2) goes out only once settled, and in the order they arrived (MQTT 4.6).
//! Outputs are published as they come (up to the broker's receive maximum in flight) and each
//! counts only once the broker's PUBACK (PUBCOMP for QoS 2) for it came back.
//!
//! Reconnecting: `poll` returns the error, the supervisor waits (100 ms doubling to 5 s) and
//! polls again; the broker then sends the unacknowledged messages again. A session the broker
//! no longer had (`session_present` false) fails the publish in hand, which the caller retries.

use super::config::BrokerUrl;
use crate::route::Routes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAckReason, Publish, PublishProperties, RetainForwardRule,
};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};

/// First wait before reconnecting; doubled after each failed try up to [`RECONNECT_MAX`].
pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two connection attempts.
pub const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Longest wait for the broker's acknowledgement of one publish.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// Where the host stands with the MQTT broker.
#[derive(Clone, Debug)]
pub enum Link {
    Up,
    Down { reason: String, since: SystemTime },
}

/// An incoming message and how to settle it.
pub struct Arrived {
    pub publish: Publish,
    /// Send (once) when its outcome is safe: the session acknowledges it in arrival order.
    pub settle: Settle,
}

/// Acknowledges one incoming message once settled (dropped unsettled: never acknowledged; the
/// broker sends it again on the next session).
pub struct Settle {
    generation: u64,
    seq: u64,
    notes: mpsc::UnboundedSender<Note>,
    /// The current connection's number.
    current: Arc<std::sync::atomic::AtomicU64>,
}

impl Settle {
    /// Whether the connection the message came on is gone: the broker sends it again on the new
    /// one, so whoever holds it should let it go rather than deliver it a second time.
    pub fn stale(&self) -> bool {
        self.current.load(std::sync::atomic::Ordering::SeqCst) != self.generation
    }

    pub fn settled(self) {
        let _ = self
            .notes
            .send(Note::Settled(self.generation, self.seq, true));
    }

    /// Left unacknowledged on purpose (the host's bound on waiting messages): the later ones
    /// are acknowledged without waiting for it, and the broker sends it again on the next
    /// session.
    pub fn skipped(self) {
        let _ = self
            .notes
            .send(Note::Settled(self.generation, self.seq, false));
    }
}

/// Where a publish's answer goes.
type Answer = oneshot::Sender<Result<(), String>>;

/// Publishes waiting for the broker's answer, paired with their packet ids as the session's
/// events report them. rumqttc hands publishes to the network in the order they were submitted
/// and reports each (`Outgoing::Publish(pkid)`), so submitted answers are matched in order; a
/// packet id already waiting is a retransmission after a reconnect; a publish held back because
/// its packet id is still in use (`AwaitAck`) waits for that id's answer first.
#[derive(Default)]
struct Inflight {
    /// Submitted, not yet on the wire, in submission order.
    submitted: VecDeque<Answer>,
    /// On the wire, waiting for PUBACK (PUBCOMP for QoS 2), by packet id.
    sent: std::collections::HashMap<u16, Answer>,
    /// Held back until the answer to the same packet id came.
    held: std::collections::HashMap<u16, Answer>,
}

impl Inflight {
    /// A publish went out with `pkid` (0: QoS 0, answered at once).
    fn on_wire(&mut self, pkid: u16) {
        if pkid != 0 && self.sent.contains_key(&pkid) {
            return; // a retransmission
        }
        let Some(answer) = self.submitted.pop_front() else {
            return;
        };
        if pkid == 0 {
            let _ = answer.send(Ok(()));
        } else {
            self.sent.insert(pkid, answer);
        }
    }

    /// The next publish waits for `pkid`'s answer before it goes out with that id.
    fn held_back(&mut self, pkid: u16) {
        if let Some(answer) = self.submitted.pop_front() {
            self.held.insert(pkid, answer);
        }
    }

    /// The broker answered `pkid`.
    fn answered(&mut self, pkid: u16, result: Result<(), String>) {
        if let Some(answer) = self.sent.remove(&pkid) {
            let _ = answer.send(result);
        }
        if let Some(next) = self.held.remove(&pkid) {
            // It goes out now with this id; its own answer comes later.
            self.sent.insert(pkid, next);
        }
    }

    /// The broker did not keep the session: every publish in hand is lost with it.
    fn session_lost(&mut self, why: &str) {
        let all = self
            .submitted
            .drain(..)
            .chain(self.sent.drain().map(|(_, a)| a))
            .chain(self.held.drain().map(|(_, a)| a));
        for answer in all {
            let _ = answer.send(Err(why.to_string()));
        }
    }
}

/// The session's shared state.
pub struct MqttLink {
    url: BrokerUrl,
    tls: super::config::MqttTls,
    client_id: String,
    session_expiry_s: u32,
    state: watch::Sender<Link>,
    client: Mutex<Option<AsyncClient>>,
    /// The routes whose filters the session subscribes.
    routes: Arc<Routes>,
    /// What this session subscribed (filter → QoS).
    subscribed: Mutex<std::collections::BTreeMap<String, u8>>,
    /// One publish at a time: its PUBACK is then unambiguous across reconnects.
    /// The number of the current connection (counts up with each CONNACK).
    generation: Arc<std::sync::atomic::AtomicU64>,
    /// Held while a publish is submitted, so submissions reach rumqttc in the order they were
    /// recorded.
    submitting: tokio::sync::Mutex<()>,
    inflight: Mutex<Inflight>,
}

/// Why outputs did not reach the MQTT broker; every cause is worth a retry.
#[derive(Debug, thiserror::Error)]
#[error("MQTT broker: {0}")]
pub struct PublishError(pub String);

impl MqttLink {
    pub fn new(
        url: BrokerUrl,
        tls: super::config::MqttTls,
        client_id: String,
        session_expiry_s: u32,
        routes: Arc<Routes>,
    ) -> MqttLink {
        let (state, _) = watch::channel(Link::Down {
            reason: "not connected yet".into(),
            since: SystemTime::now(),
        });
        MqttLink {
            url,
            tls,
            client_id,
            session_expiry_s,
            state,
            client: Mutex::new(None),
            routes,
            subscribed: Mutex::new(std::collections::BTreeMap::new()),
            generation: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            submitting: tokio::sync::Mutex::new(()),
            inflight: Mutex::new(Inflight::default()),
        }
    }

    /// Bring the subscriptions in line with the routes' filters: subscribe new ones (and
    /// changed QoS), unsubscribe those no route takes any more. Retained messages come with a
    /// new subscription only, not again with each reconnect.
    /// End the connection (the supervisor connects again after its pause; the broker then
    /// sends the unacknowledged messages again).
    pub fn renew(&self, why: &str) {
        if let Some(client) = self.client.lock().expect("client lock").clone() {
            tracing::warn!(reason = why, "MQTT: renewing the session's connection");
            let _ = client.try_disconnect();
        }
    }

    pub fn subscribe_routes(&self) {
        let Some(client) = self.client.lock().expect("client lock").clone() else {
            return;
        };
        let wanted = super::filters(&self.routes.all());
        let mut subscribed = self.subscribed.lock().expect("subscribed lock");
        let new: Vec<Filter> = wanted
            .iter()
            .filter(|(f, q)| subscribed.get(*f) != Some(q))
            .map(|(f, q)| {
                let mut filter = Filter::new(f.clone(), qos_of(*q));
                filter.retain_forward_rule = RetainForwardRule::OnNewSubscribe;
                filter
            })
            .collect();
        if !new.is_empty() {
            match client.try_subscribe_many(new) {
                Ok(()) => {
                    tracing::info!(filters = ?wanted.keys().collect::<Vec<_>>(), "MQTT: subscribed")
                }
                Err(e) => tracing::warn!(error = %e, "MQTT: cannot subscribe"),
            }
        }
        for gone in subscribed.keys().filter(|f| !wanted.contains_key(*f)) {
            if let Err(e) = client.try_unsubscribe(gone.clone()) {
                tracing::warn!(filter = %gone, error = %e, "MQTT: cannot unsubscribe");
            }
        }
        *subscribed = wanted;
    }

    /// Follow the state as it changes.
    pub fn watch(&self) -> watch::Receiver<Link> {
        self.state.subscribe()
    }

    pub fn link(&self) -> Link {
        self.state.borrow().clone()
    }

    pub fn redacted_url(&self) -> String {
        self.url.redacted()
    }

    /// Publish `payload` to `topic` and wait for the broker's PUBACK (QoS 1/2) or the write
    /// (QoS 0).
    pub async fn publish(
        &self,
        topic: String,
        qos: u8,
        retain: bool,
        payload: Vec<u8>,
        properties: PublishProperties,
    ) -> Result<(), PublishError> {
        let client = self
            .client
            .lock()
            .expect("client lock")
            .clone()
            .ok_or_else(|| PublishError("not connected".into()))?;
        if !matches!(self.link(), Link::Up) {
            return Err(PublishError("not connected".into()));
        }
        let (answer, answered) = oneshot::channel();
        {
            let _in_order = self.submitting.lock().await;
            self.inflight
                .lock()
                .expect("inflight lock")
                .submitted
                .push_back(answer);
            if let Err(e) = client
                .publish_with_properties(topic, qos_of(qos), retain, payload, properties)
                .await
            {
                // Never submitted: take its answer back out (the last one recorded).
                self.inflight
                    .lock()
                    .expect("inflight lock")
                    .submitted
                    .pop_back();
                return Err(PublishError(e.to_string()));
            }
        }
        let answer = tokio::time::timeout(ANSWER_WITHIN, answered).await;
        let answer = match answer {
            Ok(answer) => answer.map_err(|_| PublishError("the session ended".into()))?,
            Err(_) => {
                // Not answered: the caller tries again (at least once; the same message id).
                return Err(PublishError(format!(
                    "no acknowledgement from the broker within {} s",
                    ANSWER_WITHIN.as_secs()
                )));
            }
        };
        answer.map_err(PublishError)
    }

    /// The session's events that concern the host's own publishes: on the wire, held back,
    /// answered. (Incoming publishes are the supervisor's.)
    fn outputs_event(&self, event: &Event) {
        match event {
            Event::Incoming(Packet::PubAck(ack)) => {
                let ok = matches!(
                    ack.reason,
                    PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                );
                let result = if ok {
                    Ok(())
                } else {
                    Err(format!("the broker refused the message: {:?}", ack.reason))
                };
                self.inflight().answered(ack.pkid, result);
            }
            Event::Incoming(Packet::PubComp(comp)) => {
                self.inflight().answered(comp.pkid, Ok(()));
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => self.inflight().on_wire(*pkid),
            Event::Outgoing(Outgoing::AwaitAck(pkid)) => self.inflight().held_back(*pkid),
            _ => {}
        }
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().expect("inflight lock")
    }
}

pub fn qos_of(qos: u8) -> QoS {
    match qos {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// What the acknowledging task hears, in order.
enum Note {
    /// A new connection: messages of earlier ones are not acknowledged (the broker resends them).
    Session(u64),
    /// A QoS 1/2 message arrived: its packet id and QoS.
    Arrived(u64, u64, u16, QoS),
    /// The source is done with a message: acknowledge it (true) or leave it (false).
    Settled(u64, u64, bool),
    /// Answered, once every acknowledgement of the notes before it is handed to the client, with
    /// how many acknowledgements were handed to it in all.
    Flush(oneshot::Sender<u64>),
}

/// The acknowledgements of incoming messages the client has put on the wire (counted from its
/// events), and the QoS 2 ones among them whose exchange is still open (PUBREC sent, the
/// broker's PUBREL not answered with PUBCOMP yet).
#[derive(Default)]
struct AcksOnWire {
    written: u64,
    open: std::collections::HashSet<u16>,
}

impl AcksOnWire {
    fn saw(&mut self, event: &Event) {
        match event {
            Event::Outgoing(Outgoing::PubAck(_)) => self.written += 1,
            Event::Outgoing(Outgoing::PubRec(pkid)) => {
                self.written += 1;
                self.open.insert(*pkid);
            }
            Event::Outgoing(Outgoing::PubComp(pkid)) => {
                self.open.remove(pkid);
            }
            _ => {}
        }
    }
}

/// Acknowledge settled messages in arrival order, per connection.
async fn acknowledge(client: AsyncClient, mut notes: mpsc::UnboundedReceiver<Note>) {
    let mut generation = 0;
    // Messages of this connection from `first` on: packet id, QoS, done, to acknowledge.
    let mut first = 0u64;
    let mut unacked: VecDeque<(u16, QoS, bool, bool)> = VecDeque::new();
    let mut handed = 0u64;
    while let Some(note) = notes.recv().await {
        match note {
            Note::Session(g) => {
                generation = g;
                unacked.clear();
            }
            Note::Arrived(g, seq, pkid, qos) if g == generation => {
                if unacked.is_empty() {
                    first = seq;
                }
                // Sequence numbers of QoS 0 messages are skipped: keep the index dense.
                while first + (unacked.len() as u64) < seq {
                    unacked.push_back((0, QoS::AtMostOnce, true, false));
                }
                unacked.push_back((pkid, qos, false, false));
            }
            Note::Settled(g, seq, ack) if g == generation => {
                if let Some(entry) = seq
                    .checked_sub(first)
                    .and_then(|i| unacked.get_mut(i as usize))
                {
                    entry.2 = true;
                    entry.3 = ack;
                }
                while unacked.front().is_some_and(|(_, _, done, _)| *done) {
                    let (pkid, qos, _, ack) = unacked.pop_front().expect("front");
                    first += 1;
                    if !ack {
                        continue;
                    }
                    let mut publish = Publish::new("", qos, Vec::new(), None);
                    publish.pkid = pkid;
                    match client.ack(&publish).await {
                        Ok(()) => handed += 1,
                        Err(e) => {
                            tracing::warn!(error = %e, "MQTT: acknowledgement not sent; the broker sends the message again")
                        }
                    }
                }
            }
            Note::Flush(done) => {
                let _ = done.send(handed);
            }
            _ => {}
        }
    }
}

/// Keep the session until `shutdown`: connect, subscribe to `filters`, hand each incoming
/// message to `arrived`, acknowledge settled ones in order, answer publishes; reconnect with
/// backoff.
pub async fn supervise(
    link: Arc<MqttLink>,
    arrived: mpsc::Sender<Arrived>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut options = MqttOptions::new(&link.client_id, &link.url.host, link.url.port);
    options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(link.session_expiry_s))
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_receive_maximum(Some(super::RECEIVE_MAXIMUM))
        // Publishes in flight at once, at most (the broker's receive maximum if lower): what a
        // broker restart can make the client send twice.
        .set_outgoing_inflight_upper_limit(super::RECEIVE_MAXIMUM)
        .set_max_packet_size(Some(super::MAX_PACKET_BYTES));
    // Small packets (acknowledgements, one publish in hand) go out at once, not held back by
    // Nagle's algorithm waiting for the broker's delayed TCP acknowledgement.
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    options.set_network_options(network);
    if let (Some(user), password) = (&link.url.user, &link.url.password) {
        options.set_credentials(user, password.clone().unwrap_or_default());
    }
    if link.url.tls {
        loop {
            match link.tls.load() {
                Ok(config) => {
                    options.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(Arc::new(config)),
                    ));
                    break;
                }
                Err(e) => {
                    // Checked when the file was read; a file broken since is reported and read again.
                    tracing::error!(error = %e, "MQTT TLS files do not load; not connecting");
                    link.state.send_replace(Link::Down {
                        reason: format!("TLS: {e}"),
                        since: SystemTime::now(),
                    });
                    tokio::select! {
                        () = tokio::time::sleep(RECONNECT_MAX) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        }
    }
    let (client, mut events) = AsyncClient::new(options, 256);
    *link.client.lock().expect("client lock") = Some(client.clone());
    let (notes, heard) = mpsc::unbounded_channel::<Note>();
    let acker = tokio::spawn(acknowledge(client.clone(), heard));
    let (mut generation, mut seq) = (0u64, 0u64);
    let mut acks = AcksOnWire::default();
    let mut pause = RECONNECT_MIN;
    loop {
        let event = tokio::select! {
            event = events.poll() => event,
            _ = shutdown.changed() => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                // rumqttc forgets the open QoS 2 exchanges of the last connection.
                acks.open.clear();
                generation += 1;
                link.generation
                    .store(generation, std::sync::atomic::Ordering::SeqCst);
                let _ = notes.send(Note::Session(generation));
                pause = RECONNECT_MIN;
                if !ack.session_present {
                    link.inflight()
                        .session_lost("the broker did not keep the session; publishing again");
                }
                if !ack.session_present {
                    link.subscribed.lock().expect("subscribed lock").clear();
                }
                link.subscribe_routes();
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to the MQTT broker"
                );
                crate::telemetry::metrics()
                    .connection_up
                    .with(&["mqtt"])
                    .inc();
                link.state.send_replace(Link::Up);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                seq += 1;
                if publish.qos != QoS::AtMostOnce {
                    let _ = notes.send(Note::Arrived(generation, seq, publish.pkid, publish.qos));
                }
                let settle = Settle {
                    generation,
                    seq,
                    notes: notes.clone(),
                    current: Arc::clone(&link.generation),
                };
                // The source stops taking messages when the host stops: then this one is left
                // to the broker, and the session drains.
                let handed = tokio::select! {
                    sent = arrived.send(Arrived { publish, settle }) => sent.is_ok(),
                    _ = shutdown.changed() => false,
                };
                if !handed {
                    break;
                }
            }
            Ok(event) => {
                acks.saw(&event);
                link.outputs_event(&event);
            }
            Err(e) => {
                let reason = format!("broker {}: {e}", link.url.redacted());
                // The state first: once the warning is out, /readyz names the same reason.
                let was = link.state.send_replace(Link::Down {
                    reason: reason.clone(),
                    since: SystemTime::now(),
                });
                tracing::warn!(reason = %reason, retry_in_ms = pause.as_millis() as u64, "MQTT broker unavailable; reconnecting");
                let metrics = crate::telemetry::metrics();
                match was {
                    Link::Up => &metrics.connection_lost,
                    Link::Down { .. } => &metrics.connection_failed,
                }
                .with(&["mqtt"])
                .inc();
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => break,
                }
                pause = (pause * 2).min(RECONNECT_MAX);
            }
        }
    }
    let drained = matches!(*link.state.borrow(), Link::Up)
        && drain(&link, &client, &mut events, &arrived, &notes, &mut acks).await;
    if !drained {
        // No acknowledgement goes out any more: the messages still running are left to their
        // redelivery (stale) rather than retried here on a connection that is gone.
        link.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    link.state.send_replace(Link::Down {
        reason: "the host is stopping".into(),
        since: SystemTime::now(),
    });
    // Publishes of other sources (the outbox, other routes' outputs) still waiting for an
    // answer fail now instead of waiting it out.
    link.inflight().session_lost("the host is stopping");
    let _ = client.try_disconnect();
    acker.abort();
}

/// The host is stopping with the session up: the source finishes the messages running, and
/// their outputs and acknowledgements still go out on this connection. So it is kept (polled,
/// not reconnected) until the source is done, every acknowledgement it was handed is on the wire,
/// the QoS 2 exchanges they began are complete (the broker's PUBREL answered), and the client's
/// DISCONNECT is sent. Returns false when the connection was lost first (or the stop's own bound
/// ends the task): what was not acknowledged comes again. Messages arriving meanwhile are left
/// unacknowledged: the broker sends them again to the next session.
async fn drain(
    link: &MqttLink,
    client: &AsyncClient,
    events: &mut rumqttc::v5::EventLoop,
    arrived: &mpsc::Sender<Arrived>,
    notes: &mpsc::UnboundedSender<Note>,
    acks: &mut AcksOnWire,
) -> bool {
    let settled = async {
        // The source drops its end once every message it started is settled.
        arrived.closed().await;
        let (done, flushed) = oneshot::channel();
        if notes.send(Note::Flush(done)).is_err() {
            return 0;
        }
        flushed.await.unwrap_or(0)
    };
    tokio::pin!(settled);
    // Acknowledgements handed to the client in all, once the source is done.
    let mut handed = None;
    let mut disconnecting = false;
    loop {
        // A QoS 2 session left with an exchange open would have the broker send its PUBREL to
        // the next client of the session, which knows nothing of it (rumqttc takes that for a
        // protocol error, and drops the connection, again and again).
        if handed.is_some_and(|n| acks.written >= n) && !disconnecting && acks.open.is_empty() {
            // Queued behind everything the client was handed, so sent after it. A full request
            // queue refuses it: tried again after the next event, which empties the queue.
            disconnecting = client.try_disconnect().is_ok();
        }
        tokio::select! {
            n = &mut settled, if handed.is_none() => handed = Some(n),
            event = events.poll() => match event {
                Ok(Event::Outgoing(Outgoing::Disconnect)) if disconnecting => {
                    tracing::info!("MQTT: messages in hand settled; disconnected");
                    return true;
                }
                Ok(event) => {
                    acks.saw(&event);
                    link.outputs_event(&event);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT: the connection ended while stopping; what is unacknowledged comes again");
                    return false;
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(inflight: &mut Inflight) -> oneshot::Receiver<Result<(), String>> {
        let (answer, answered) = oneshot::channel();
        inflight.submitted.push_back(answer);
        answered
    }

    #[test]
    fn answers_follow_packet_ids_across_retransmissions_held_publishes_and_lost_sessions() {
        let mut inflight = Inflight::default();
        let (mut a, mut b, mut c) = (
            submit(&mut inflight),
            submit(&mut inflight),
            submit(&mut inflight),
        );
        inflight.on_wire(1);
        inflight.on_wire(2);
        // After a reconnect the broker kept the session: 1 goes out again, nothing moves.
        inflight.on_wire(1);
        inflight.answered(2, Ok(()));
        assert_eq!(b.try_recv().unwrap(), Ok(()));
        assert!(a.try_recv().is_err(), "1 is still waiting");
        // c would take id 1, still in use: held back until 1 is answered.
        inflight.held_back(1);
        inflight.answered(1, Err("refused".into()));
        assert_eq!(a.try_recv().unwrap(), Err("refused".into()));
        assert!(
            c.try_recv().is_err(),
            "c went out with id 1 and waits for its own answer"
        );
        inflight.on_wire(1); // c on the wire: already expected under id 1
        let mut d = submit(&mut inflight);
        inflight.on_wire(0); // d at QoS 0: answered when written
        assert_eq!(d.try_recv().unwrap(), Ok(()));
        let mut e = submit(&mut inflight);
        inflight.session_lost("gone");
        assert_eq!(c.try_recv().unwrap(), Err("gone".into()));
        assert_eq!(e.try_recv().unwrap(), Err("gone".into()));
    }
}
