//! Sink `amqp`: outputs are published to the route's exchange (durable topic) as persistent
//! messages on a channel in confirm mode; a publish counts only when the broker confirmed it.
//!
//! Message properties follow the CloudEvents AMQP binding for structured mode: the body is the
//! event, `content-type` is `application/cloudevents+json`, `message-id` the output's id (so
//! consumers deduplicate); `millrace-plant` and `millrace-route` headers name where it came from.
//!
//! Every publish is `mandatory`: a message no queue takes comes back (`basic.return`) and counts
//! as not delivered. lapin hands a return to whichever confirm of the channel resolves next, not
//! to the message returned (with `multiple` acks, to any of the messages the ack covers), so a
//! publish cannot judge its messages by its own confirms alone. Concurrent publishes therefore
//! share a channel as a *batch*: the batch has its channel to itself (a pool of [`CHANNELS`] at
//! most, opened as needed), closes when the first confirm its collector waits for came
//! (publishes made meanwhile share that round trip) or at 256 messages, and its collector waits
//! for every confirm on the channel before judging: every return it got is matched to the
//! batch's messages by id, exchange and routing key, and one that matches none marks them all
//! not delivered. A publish given up half-way (a failed publish, its task dropped) takes confirms
//! with it that may carry another's return, so then no message of the batch counts as
//! delivered. Either way: a copy later, never a loss. Only a batch judged by all its confirms
//! gives its channel back to the pool.
//!
//! lapin numbers a publish's confirm and queues its frames in two steps of the publish's first
//! poll; two publishes polled at once on two threads may take their numbers in one order and put
//! their frames on the wire in the other, and each is then told the other's confirm (seen in the
//! cluster test: an output the broker refused judged confirmed, its input acknowledged, the
//! output lost; and the retry copy published beside it judged refused). A batch's publishes
//! therefore take that first poll one at a time, under the batch's `order` lock.
//!
//! A confirm is waited for at most `host.amqp_confirm_timeout_s` (while the broker is not
//! blocking the connection: under its flow control waiting is right). A broker can keep a live
//! connection and never confirm (RabbitMQ's quorum-queue client before 4.1.5 could lose an
//! enqueue sent while the link to the leader's node broke, and hold the channel's later ones
//! behind it); past the bound the batch's messages count
//! as not published, with a broker error, so the session is rebuilt and the deliveries in hand
//! come again: a copy, never a loss, and never a delivery held for ever.

use crate::pipeline::chain::Failure;
use crate::plugin::PluginId;
use crate::plugin::bindings::types::Message;
use crate::route::Route;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// Why outputs did not reach the broker; every cause is worth a redelivery.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker refused (nack) output {0}")]
    Nacked(String),
    /// A name the message would carry does not fit an AMQP short string.
    #[error(
        "message {id}: its {what} is {len} bytes, AMQP carries at most 255 (for a routing key: the route's `routing_key` template filled from the event)"
    )]
    TooLong {
        id: String,
        what: &'static str,
        len: usize,
    },
    /// Another publish sharing the channel was given up half-way, taking confirms (and any
    /// return attached to them) with it: whether these messages were routed is not known.
    #[error("not known whether output {0} was routed (a publish sharing its channel failed)")]
    Unjudged(String),
    /// No queue is bound where the message was published: it would have vanished.
    #[error(
        "no queue takes message {id} (exchange {exchange:?}, routing key {routing_key:?}); bind one"
    )]
    Unroutable {
        id: String,
        exchange: String,
        routing_key: String,
    },
}

/// One message of a publish: where it goes and what it is.
struct Outgoing<'a> {
    exchange: &'a str,
    routing_key: &'a str,
    /// Its `message-id` (empty when it has none).
    id: &'a str,
    /// The output's own bytes, or a copy with attributes written in.
    body: std::borrow::Cow<'a, [u8]>,
    properties: BasicProperties,
}

/// What a return is matched by: a hash of the exchange, routing key and `message-id` of a
/// message sent. Messages with equal hashes are judged alike: a copy at worst, never a loss.
fn key(exchange: &str, routing_key: &str, id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::hash::DefaultHasher::new();
    (exchange, routing_key, id).hash(&mut hasher);
    hasher.finish()
}

/// Why a publish did not go through: the first message (by index in the publish) that did not,
/// or the channel failing.
enum Fate {
    Returned(usize),
    Nacked(usize),
    Broker(lapin::Error),
    /// A publish of the batch was given up half-way: the confirms it dropped may have carried
    /// a return of this publish's messages, so whether they were routed is not known.
    Unknown,
}

/// What the broker's confirms of one batch say, publish by publish (in the order they joined),
/// each message in the order sent: taken (and routed to a queue), or why not. `answers` holds
/// every confirm of the channel the batch had to itself (a batch one of whose publishes was given
/// up half-way is not judged by them: see [`Fate::Unknown`]), so every return among them belongs
/// to one of its messages; lapin may have attached it to another message's confirm, so a return is
/// matched by id, exchange and routing key, and one that matches none marks them all returned.
fn judge(
    sent: &[Vec<u64>],
    answers: &[Vec<Result<lapin::Confirmation, lapin::Error>>],
    broken: bool,
) -> Vec<Result<(), Fate>> {
    use lapin::Confirmation;
    let returned: Vec<u64> = answers
        .iter()
        .flatten()
        .filter_map(|a| match a {
            Ok(Confirmation::Ack(Some(r)) | Confirmation::Nack(Some(r))) => Some(key(
                r.delivery.exchange.as_str(),
                r.delivery.routing_key.as_str(),
                r.properties
                    .message_id()
                    .as_ref()
                    .map_or("", |id| id.as_str()),
            )),
            _ => None,
        })
        .collect();
    let unplaced = returned
        .iter()
        .any(|r| !sent.iter().flatten().any(|k| k == r));
    let one = |keys: &Vec<u64>, answers: &Vec<Result<Confirmation, lapin::Error>>| {
        for (i, (k, answer)) in keys.iter().zip(answers).enumerate() {
            let acked = match answer {
                Ok(Confirmation::Ack(_)) => true,
                Ok(Confirmation::Nack(_)) => false,
                Err(e) => return Err(Fate::Broker(e.clone())),
                // The channel is in confirm mode: an answer without a confirm means it is not
                // usable.
                Ok(Confirmation::NotRequested) => {
                    return Err(Fate::Broker(lapin::Error::from(
                        lapin::ErrorKind::InvalidChannelState(
                            lapin::ChannelState::Closed,
                            "no confirm",
                        ),
                    )));
                }
            };
            if unplaced || returned.contains(k) {
                return Err(Fate::Returned(i));
            }
            if !acked {
                return Err(Fate::Nacked(i));
            }
        }
        Ok(())
    };
    sent.iter()
        .zip(answers)
        // A publish given up half-way dropped confirms that may carry another's return: no
        // publish of the batch counts as routed.
        .map(|(k, a)| one(k, a).and_then(|()| if broken { Err(Fate::Unknown) } else { Ok(()) }))
        .collect()
}

/// Most bytes of an AMQP short string: exchange, routing key, `message-id`, content type.
pub const MAX_SHORT_STRING: usize = 255;

/// Whether every name of a message fits an AMQP short string. One that does not cannot be
/// framed (lapin writes its length in one byte): published, it would corrupt the frame and the
/// broker would close the connection every route shares.
fn fits(
    exchange: &str,
    routing_key: &str,
    id: &str,
    content_type: &str,
) -> Result<(), PublishError> {
    let names = [
        ("exchange", exchange),
        ("routing key", routing_key),
        ("id", id),
        ("content type", content_type),
    ];
    match names
        .into_iter()
        .find(|(_, value)| value.len() > MAX_SHORT_STRING)
    {
        None => Ok(()),
        Some((what, value)) => Err(PublishError::TooLong {
            id: id.chars().take(64).collect(),
            what,
            len: value.len(),
        }),
    }
}

/// Whether an output can be published to `exchange` with `routing_key`: every name it would
/// carry fits an AMQP short string.
pub fn check_publishable(
    exchange: &str,
    routing_key: &str,
    output: &Message,
) -> Result<(), PublishError> {
    fits(exchange, routing_key, &output.id, &output.content_type)
}

impl PublishError {
    /// Whether the channel is gone (reconnect), rather than one message refused.
    pub fn channel_lost(&self) -> bool {
        matches!(self, PublishError::Broker(_))
    }
}

/// Most confirm-mode channels a publisher opens on its connection: as many batches can wait for
/// their confirms at once; a publish that finds none free waits for one.
pub const CHANNELS: usize = 32;

/// Most messages one batch takes (counted as publishes join); a publish that would go beyond
/// starts the next batch, and a publish of more than this many has a batch of its own.
const BATCH_MESSAGES: usize = 256;

/// How a publisher publishes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Publishing {
    /// Whether outputs carry `millrace-plant`, `millrace-route` and `millrace-lineage`
    /// (`host.amqp_output_headers`). Without them (and no trace context to carry) an output has
    /// no header table, which RabbitMQ handles for markedly less CPU per message
    /// (docs/performance.md).
    pub output_headers: bool,
    /// Whether outputs that are structured CloudEvents carry the same three values as the
    /// extension attributes `millraceplant`, `millraceroute` and `millracelineage`
    /// (`host.amqp_event_provenance`): in the body, which the broker does not read.
    pub event_provenance: bool,
    /// How long the broker may take to confirm a publish while it is not blocking the
    /// connection (`host.amqp_confirm_timeout_s`).
    pub confirm_timeout: Duration,
}

/// The publisher of one broker connection, shared by every route that publishes.
#[derive(Clone)]
pub struct AmqpPublisher {
    channels: Arc<Channels>,
    output_headers: bool,
    event_provenance: bool,
}

/// Confirm-mode channels of one connection, each carrying one batch at a time.
struct Channels {
    connection: Weak<Connection>,
    confirm_timeout: Duration,
    idle: Mutex<Vec<Channel>>,
    slots: Arc<tokio::sync::Semaphore>,
    /// The batch publishes join while it is open.
    open: Mutex<Option<Arc<Batch>>>,
}

/// Publishes sharing one channel: each publishes its messages on it and hands their confirms to
/// the batch's collector, which closes the batch when the first of them came (or it is full),
/// waits for every confirm on the channel and judges each publish.
struct Batch {
    channel: Channel,
    join: Mutex<Join>,
    /// Held over a publish's first poll on the channel (see the module's doc): confirm numbers
    /// follow the order of the frames on the wire.
    order: Mutex<()>,
}

struct Join {
    /// Where publishes hand their confirms; `None` once the batch is closed. A publish joins by
    /// taking a clone, so the collector's list of publishes ends only when every publish that
    /// joined has handed its confirms over (or was given up).
    members: Option<tokio::sync::mpsc::UnboundedSender<Member>>,
    messages: usize,
    /// A publish on the channel failed or was given up half-way: the channel may carry confirms
    /// nobody waits for, so it does not go back to the pool.
    broken: bool,
}

impl Batch {
    fn join(&self) -> std::sync::MutexGuard<'_, Join> {
        self.join.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Marks its batch broken when dropped before [`Joined::handed_over`]: a publish given up
/// half-way (its task dropped) left confirms on the channel that no collector waits for.
struct Joined {
    channels: Arc<Channels>,
    batch: Arc<Batch>,
    members: tokio::sync::mpsc::UnboundedSender<Member>,
    handed_over: bool,
}

impl Joined {
    fn hand_over(mut self, member: Member) {
        // The collector lives while a sender does, unless the runtime is stopping: then the
        // publish learns from its dropped verdict.
        let _ = self.members.send(member);
        self.handed_over = true;
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        if !self.handed_over {
            // Nobody joins it any more either: its collector ends once the publishes that did
            // join have handed over.
            let mut join = self.batch.join();
            join.broken = true;
            self.channels.close(&self.batch, &mut join);
        }
    }
}

/// One publish of a batch.
struct Member {
    sent: Vec<u64>,
    confirms: Vec<lapin::PublisherConfirm>,
    verdict: tokio::sync::oneshot::Sender<Result<(), Fate>>,
}

/// A channel taken for one batch. Back to the pool only once every confirm on it came
/// ([`Taken::clean`]); a batch given up half-way drops it, and dropping the last handle closes
/// the channel at the broker, so no confirm or return of it can reach the next batch.
struct Taken {
    channels: Arc<Channels>,
    channel: Option<Channel>,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Taken {
    /// Every confirm of this channel came: it may serve the next batch.
    fn clean(mut self) {
        if let Some(channel) = self.channel.take() {
            self.channels
                .idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(channel);
        }
    }
}

impl Channels {
    async fn take(self: &Arc<Self>) -> Result<Taken, lapin::Error> {
        let slot = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the pool's semaphore is never closed");
        let idle = loop {
            let next = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            match next {
                Some(channel) if !channel.status().connected() => continue,
                other => break other,
            }
        };
        let channel = match idle {
            Some(channel) => channel,
            None => {
                let Some(connection) = self.connection.upgrade() else {
                    return Err(lapin::Error::from(lapin::ErrorKind::InvalidChannelState(
                        lapin::ChannelState::Closed,
                        "the connection is closed",
                    )));
                };
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                channel
            }
        };
        Ok(Taken {
            channels: self.clone(),
            channel: Some(channel),
            _slot: slot,
        })
    }

    /// The open batch, if any.
    fn open(&self) -> Option<Arc<Batch>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A new batch on a channel of its own, open for publishes to join, its collector started.
    async fn begin(self: &Arc<Self>) -> Result<Arc<Batch>, lapin::Error> {
        let taken = self.take().await?;
        let (members, joined) = tokio::sync::mpsc::unbounded_channel();
        let batch = Arc::new(Batch {
            channel: taken.channel.clone().expect("held until dropped"),
            join: Mutex::new(Join {
                members: Some(members),
                messages: 0,
                broken: false,
            }),
            order: Mutex::new(()),
        });
        // Another publish may have begun one meanwhile: that one stays open to the rest, this one
        // serves the publish that began it.
        self.open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| batch.clone());
        tokio::spawn(self.clone().collect(batch.clone(), taken, joined));
        Ok(batch)
    }

    /// `batch` takes no more publishes, and is no longer the open one (if it still was).
    fn close(&self, batch: &Arc<Batch>, join: &mut Join) {
        join.members = None;
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_some_and(|b| Arc::ptr_eq(b, batch)) {
            *open = None;
        }
    }

    /// The broker's answer to one publish, waited for until `clock` rings; the clock is put
    /// forward while the broker blocks the connection (flow control), and once more after it
    /// stopped blocking (the answers held meanwhile are on their way). Past it: an error, which
    /// drops the channel and the session. One clock serves a whole batch: set once, not per
    /// message.
    async fn answer(
        &self,
        confirm: lapin::PublisherConfirm,
        mut clock: std::pin::Pin<&mut tokio::time::Sleep>,
    ) -> Result<lapin::Confirmation, lapin::Error> {
        let mut confirm = std::pin::pin!(confirm);
        let mut was_blocked = false;
        loop {
            tokio::select! {
                // The answer is taken if it is there, even once the clock rang.
                biased;
                answer = confirm.as_mut() => return answer,
                () = clock.as_mut() => {
                    if self.blocked() || was_blocked {
                        was_blocked = self.blocked();
                        clock
                            .as_mut()
                            .reset(tokio::time::Instant::now() + self.confirm_timeout);
                    } else {
                        return Err(lapin::Error::from(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!(
                                "the broker did not confirm a publish within {} s (host.amqp_confirm_timeout_s)",
                                self.confirm_timeout.as_secs()
                            ),
                        )));
                    }
                }
            }
        }
    }

    /// Whether the broker is blocking the connection (a memory or disk alarm).
    fn blocked(&self) -> bool {
        self.connection
            .upgrade()
            .is_some_and(|c| c.status().blocked())
    }

    /// Wait for every confirm of `batch` and tell each publish its fate. The batch closes when
    /// the first confirm handed over came: publishes made meanwhile share its round trip.
    async fn collect(
        self: Arc<Self>,
        batch: Arc<Batch>,
        taken: Taken,
        mut joined: tokio::sync::mpsc::UnboundedReceiver<Member>,
    ) {
        let mut members = Vec::new();
        let mut answers: Vec<Vec<_>> = Vec::new();
        let mut open = true;
        // Set when the first publish is handed over: the batch's bound runs from there.
        let mut clock = None;
        while let Some(mut member) = joined.recv().await {
            let clock =
                clock.get_or_insert_with(|| Box::pin(tokio::time::sleep(self.confirm_timeout)));
            let mut answered = Vec::with_capacity(member.confirms.len());
            for confirm in std::mem::take(&mut member.confirms) {
                answered.push(self.answer(confirm, clock.as_mut()).await);
                // The first confirm came: publishes from now on start the next batch.
                if open {
                    self.close(&batch, &mut batch.join());
                    open = false;
                }
            }
            answers.push(answered);
            members.push(member);
        }
        let broken = batch.join().broken;
        let intact = !broken
            && answers.iter().flatten().all(|a| {
                matches!(
                    a,
                    Ok(lapin::Confirmation::Ack(_) | lapin::Confirmation::Nack(_))
                )
            });
        let sent: Vec<Vec<u64>> = members
            .iter_mut()
            .map(|m| std::mem::take(&mut m.sent))
            .collect();
        for (member, verdict) in members.into_iter().zip(judge(&sent, &answers, broken)) {
            // A publish whose task is gone has nobody to tell.
            let _ = member.verdict.send(verdict);
        }
        if intact {
            taken.clean();
        }
    }
}

const PERSISTENT: u8 = 2;

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value.as_bytes().to_vec()))
}

/// Properties of a persistent message with an id (outputs and dead letters alike); no header
/// table at all when `headers` is empty.
fn persistent(content_type: &str, message_id: &str, headers: FieldTable) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_content_type(ShortString::from(content_type))
        .with_message_id(ShortString::from(message_id))
        .with_delivery_mode(PERSISTENT);
    if headers.inner().is_empty() {
        properties
    } else {
        properties.with_headers(headers)
    }
}

/// Why an input goes to the dead-letter queue: what the headers say.
pub struct Verdict {
    /// `rejected`, `trap`, `deadline`, `memory-cap`, `limit`, or `attempts-exhausted`.
    pub kind: &'static str,
    pub reason: String,
    /// The step that failed (1-based) and its plugin, when a plugin failed.
    pub step: Option<(u32, PluginId)>,
}

impl Verdict {
    /// A plugin's permanent failure.
    pub fn failed(failure: &Failure) -> Verdict {
        Verdict {
            kind: failure.failure.kind(),
            reason: failure.reason(),
            step: Some((failure.step, failure.plugin.clone())),
        }
    }

    /// A delivery the route refuses before any step runs (over its `max_body_kib`).
    pub fn refused(reason: String) -> Verdict {
        Verdict {
            kind: crate::deadletter::Kind::Limit.as_str(),
            reason,
            step: None,
        }
    }

    /// Transient failures until the route's attempts ran out; `last` says the last one.
    pub fn exhausted(attempts: u32, last: String, failure: Option<&Failure>) -> Verdict {
        Verdict {
            kind: "attempts-exhausted",
            reason: format!("gave up after {attempts} attempt(s); the last: {last}"),
            step: failure.map(|f| (f.step, f.plugin.clone())),
        }
    }
}

/// Header names the host writes on retried and dead-lettered messages.
pub mod headers {
    /// Attempts made so far (integer).
    pub const ATTEMPTS: &str = "x-millrace-attempts";
    pub const FIRST_FAILURE: &str = "x-millrace-first-failure";
    pub const LAST_FAILURE: &str = "x-millrace-last-failure";
    pub const ORIGINAL_EXCHANGE: &str = "x-millrace-original-exchange";
    pub const ORIGINAL_ROUTING_KEY: &str = "x-millrace-original-routing-key";
    /// How many times the message was re-injected from the dead-letter queue (integer).
    pub const REPLAY: &str = "x-millrace-replay";
    /// Prefix of every header the host writes; plugins do not see them.
    pub const PREFIX: &str = "x-millrace-";
}

/// An integer header (any AMQP integer type), or a string holding one.
pub fn header_number(table: &FieldTable, name: &str) -> Option<u64> {
    match table.inner().get(name)? {
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        AMQPValue::ShortString(s) => s.as_str().parse().ok(),
        _ => None,
    }
}

/// A string header.
pub fn header_string(table: &FieldTable, name: &str) -> Option<String> {
    match table.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

/// The `message-id` a message is sent with (empty when it has none).
fn sent_id(properties: &BasicProperties) -> &str {
    properties
        .message_id()
        .as_ref()
        .map_or("", |id| id.as_str())
}

/// Where a delivery first came from: kept in headers across retries, else where it is now.
fn origin(table: &FieldTable, exchange: &str, routing_key: &str) -> (String, String) {
    (
        header_string(table, headers::ORIGINAL_EXCHANGE).unwrap_or_else(|| exchange.to_string()),
        header_string(table, headers::ORIGINAL_ROUTING_KEY)
            .unwrap_or_else(|| routing_key.to_string()),
    )
}

/// A delivery as it arrived, for retries and dead letters.
pub struct Arrived<'a> {
    pub message_id: &'a str,
    pub body: &'a [u8],
    pub properties: &'a BasicProperties,
    pub exchange: &'a str,
    pub routing_key: &'a str,
}

impl AmqpPublisher {
    /// A publisher on `connection`; its first channel is opened now (a broker that refuses
    /// channels fails here, not at the first publish).
    pub async fn open(
        connection: &Arc<Connection>,
        publishing: Publishing,
    ) -> Result<AmqpPublisher, lapin::Error> {
        let channels = Arc::new(Channels {
            connection: Arc::downgrade(connection),
            confirm_timeout: publishing.confirm_timeout,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(tokio::sync::Semaphore::new(CHANNELS)),
            open: Mutex::new(None),
        });
        channels.take().await?.clean();
        Ok(AmqpPublisher {
            channels,
            output_headers: publishing.output_headers,
            event_provenance: publishing.event_provenance,
        })
    }

    /// Publish `messages` persistent and `mandatory`, in order, and wait until the broker
    /// confirmed every one. Concurrent publishes share a channel as one batch, judged together
    /// (see the module's doc for why a batch has its channel to itself).
    async fn send(&self, mut messages: Vec<Outgoing<'_>>) -> Result<usize, PublishError> {
        if messages.is_empty() {
            return Ok(0);
        }
        for m in &messages {
            let content_type = m.properties.content_type().as_ref();
            fits(
                m.exchange,
                m.routing_key,
                m.id,
                content_type.map_or("", |t| t.as_str()),
            )?;
        }
        let joined = loop {
            let batch = match self.channels.open() {
                Some(batch) => batch,
                None => self.channels.begin().await?,
            };
            let mut join = batch.join();
            let Some(members) = join.members.clone() else {
                continue;
            };
            if join.messages > 0 && join.messages + messages.len() > BATCH_MESSAGES {
                self.channels.close(&batch, &mut join);
                continue;
            }
            join.messages += messages.len();
            drop(join);
            break Joined {
                channels: self.channels.clone(),
                batch,
                members,
                handed_over: false,
            };
        };
        let mut confirms = Vec::with_capacity(messages.len());
        for message in &mut messages {
            let publish = joined.batch.channel.basic_publish(
                message.exchange.into(),
                message.routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &message.body,
                std::mem::take(&mut message.properties),
            );
            let mut publish = std::pin::pin!(publish);
            // The first poll numbers the confirm and queues the frames: one publish at a time.
            let first = std::future::poll_fn(|cx| {
                let _order = joined.batch.order.lock().unwrap_or_else(|e| e.into_inner());
                std::task::Poll::Ready(publish.as_mut().poll(cx))
            })
            .await;
            let published = match first {
                std::task::Poll::Ready(published) => published,
                std::task::Poll::Pending => publish.await,
            };
            // A failed publish breaks the channel: dropping `joined` closes the batch and marks
            // it broken.
            confirms.push(published?);
        }
        let (verdict, judged) = tokio::sync::oneshot::channel();
        joined.hand_over(Member {
            sent: messages
                .iter()
                .map(|m| key(m.exchange, m.routing_key, m.id))
                .collect(),
            confirms,
            verdict,
        });
        let fate = judged.await.unwrap_or_else(|_| {
            Err(Fate::Broker(lapin::Error::from(
                lapin::ErrorKind::InvalidChannelState(
                    lapin::ChannelState::Closed,
                    "the publish was abandoned (the host is stopping)",
                ),
            )))
        });
        match fate {
            Ok(()) => Ok(messages.len()),
            Err(Fate::Broker(e)) => Err(PublishError::Broker(e)),
            Err(Fate::Unknown) => Err(PublishError::Unjudged(messages[0].id.to_string())),
            Err(Fate::Nacked(i)) => Err(PublishError::Nacked(messages[i].id.to_string())),
            Err(Fate::Returned(i)) => Err(PublishError::Unroutable {
                id: messages[i].id.to_string(),
                exchange: messages[i].exchange.to_string(),
                routing_key: messages[i].routing_key.to_string(),
            }),
        }
    }

    /// Publish each output to its exchange with its routing key and lineage, in order, and wait until the
    /// broker confirmed every one.
    pub async fn publish_each(
        &self,
        outputs: &[(&str, &str, &str, &Message)],
    ) -> Result<usize, PublishError> {
        let mut messages = Vec::with_capacity(outputs.len());
        for &(exchange, key, lineage, output) in outputs {
            let mut headers = FieldTable::default();
            if self.output_headers {
                headers.insert("millrace-plant".into(), text(&output.plant));
                headers.insert("millrace-route".into(), text(&output.route));
                headers.insert("millrace-lineage".into(), text(lineage));
            }
            for (name, value) in crate::telemetry::trace::carried(&output.headers) {
                headers.insert(name.into(), text(value));
            }
            let mut body = std::borrow::Cow::Borrowed(output.body.as_slice());
            if self.event_provenance && crate::pipeline::event::is_structured(&output.content_type)
            {
                let provenance = [
                    ("millraceplant", output.plant.as_str()),
                    ("millraceroute", output.route.as_str()),
                    ("millracelineage", lineage),
                ];
                let written = body.to_mut();
                crate::pipeline::event::set_attributes(
                    &output.content_type,
                    written,
                    &provenance,
                    &[],
                );
            }
            messages.push(Outgoing {
                exchange,
                routing_key: key,
                id: &output.id,
                body,
                properties: persistent(&output.content_type, &output.id, headers),
            });
        }
        self.send(messages).await
    }

    /// Publish `outputs` to the route's exchange and wait until the broker confirmed each.
    pub async fn publish(&self, route: &Route, outputs: &[Message]) -> Result<usize, PublishError> {
        let keys: Vec<String> = outputs
            .iter()
            .map(|o| routing_key(&route.amqp.routing_key, o))
            .collect();
        let exchange = route.amqp.exchange.as_str();
        let lineage = route.lineage();
        let items: Vec<(&str, &str, &str, &Message)> = keys
            .iter()
            .zip(outputs)
            .map(|(key, output)| (exchange, key.as_str(), lineage, output))
            .collect();
        self.publish_each(&items).await
    }

    /// Park a delivery whose attempt `attempts` failed for a transient reason in the route's
    /// delay queue for `delay`; it comes back to the source queue when that expires. Confirmed.
    pub async fn retry(
        &self,
        route: &Route,
        input: &Arrived<'_>,
        attempts: u32,
        delay: std::time::Duration,
        why: &str,
    ) -> Result<(), PublishError> {
        let mut table = input.properties.headers().clone().unwrap_or_default();
        let (exchange, key) = origin(&table, input.exchange, input.routing_key);
        if header_string(&table, headers::FIRST_FAILURE).is_none() {
            table.insert(
                headers::FIRST_FAILURE.into(),
                text(&crate::durable::now_rfc3339()),
            );
        }
        table.insert(headers::ORIGINAL_EXCHANGE.into(), text(&exchange));
        table.insert(headers::ORIGINAL_ROUTING_KEY.into(), text(&key));
        table.insert(headers::LAST_FAILURE.into(), text(why));
        table.insert(headers::ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        let properties = input
            .properties
            .clone()
            .with_delivery_mode(PERSISTENT)
            .with_headers(table);
        let queue = route.amqp.retry_queue(delay);
        let id = sent_id(&properties).to_string();
        self.send(vec![Outgoing {
            exchange: "",
            routing_key: &queue,
            id: &id,
            body: input.body.into(),
            properties,
        }])
        .await?;
        Ok(())
    }

    /// Put a delivery on the route's dead-letter queue with why, and wait for the broker's
    /// confirm. Headers follow `x-death`'s spirit: reason, kind, plugin, version, digest, step,
    /// the original exchange and routing key, the first failure, the attempts made.
    pub async fn dead_letter(
        &self,
        route: &Route,
        input: &Arrived<'_>,
        attempts: u32,
        verdict: &Verdict,
    ) -> Result<(), PublishError> {
        let mut table = input.properties.headers().clone().unwrap_or_default();
        let (exchange, key) = origin(&table, input.exchange, input.routing_key);
        let first = header_string(&table, headers::FIRST_FAILURE)
            .unwrap_or_else(crate::durable::now_rfc3339);
        let (step, plugin) = match &verdict.step {
            Some((step, plugin)) => (step.to_string(), Some(plugin)),
            None => (String::new(), None),
        };
        for (name, value) in [
            ("x-millrace-reason", verdict.reason.as_str()),
            ("x-millrace-kind", verdict.kind),
            ("x-millrace-plugin", plugin.map_or("", |p| p.name.as_str())),
            (
                "x-millrace-version",
                plugin.map_or("", |p| p.version.as_str()),
            ),
            (
                "x-millrace-digest",
                plugin.map_or("", |p| p.digest.as_str()),
            ),
            ("x-millrace-step", step.as_str()),
            ("x-millrace-route", route.name.as_str()),
            ("x-millrace-lineage", route.lineage()),
            ("x-millrace-plant", route.plant.as_str()),
            (headers::ORIGINAL_EXCHANGE, exchange.as_str()),
            (headers::ORIGINAL_ROUTING_KEY, key.as_str()),
            (headers::FIRST_FAILURE, first.as_str()),
        ] {
            table.insert(name.into(), text(value));
        }
        table.insert(headers::ATTEMPTS.into(), AMQPValue::LongUInt(attempts));
        let properties = input
            .properties
            .clone()
            .with_delivery_mode(PERSISTENT)
            .with_message_id(ShortString::from(input.message_id))
            .with_headers(table);
        self.send(vec![Outgoing {
            exchange: &route.amqp.dead_letter,
            routing_key: "",
            id: input.message_id,
            body: input.body.into(),
            properties,
        }])
        .await?;
        crate::pipeline::chain::counted(route, verdict.kind);
        Ok(())
    }

    /// Send a dead letter back to the route's source queue for another run (`dlq replay`):
    /// the failure headers are dropped, the replay count goes up. Confirmed.
    pub async fn reinject(
        &self,
        route: &Route,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<u64, PublishError> {
        let old = properties.headers().clone().unwrap_or_default();
        let replay = header_number(&old, headers::REPLAY).unwrap_or(0) + 1;
        let mut table = FieldTable::default();
        for (name, value) in old.inner() {
            if !name.as_str().starts_with(headers::PREFIX) && name.as_str() != "x-death" {
                table.insert(name.clone(), value.clone());
            }
        }
        table.insert(
            headers::REPLAY.into(),
            AMQPValue::LongLongInt(replay as i64),
        );
        let properties = properties.clone().with_headers(table);
        let id = sent_id(&properties).to_string();
        self.send(vec![Outgoing {
            exchange: "",
            routing_key: &route.amqp.queue,
            id: &id,
            body: body.into(),
            properties,
        }])
        .await?;
        Ok(replay)
    }
}

/// The routing key for `output` from `template`: `{type}` is the CloudEvent `type` of a
/// structured-mode body (else the content type), `{subject}` its `subject` (else empty), both
/// read as [`crate::pipeline::event::read_attributes`] reads them; `{plant}` and `{route}` the
/// output's; filled in one pass ([`crate::pipeline::sinks::address`]).
pub fn routing_key(template: &str, output: &Message) -> String {
    // Only the names the template gives are asked for: the read stops once they are read.
    use crate::pipeline::event::read_attributes;
    let body = &output.body;
    let [ty, subject] = match (template.contains("{type}"), template.contains("{subject}")) {
        (true, true) => read_attributes(body, ["type", "subject"]),
        (true, false) => [read_attributes(body, ["type"])[0].take(), None],
        (false, true) => [None, read_attributes(body, ["subject"])[0].take()],
        (false, false) => [None, None],
    };
    crate::pipeline::sinks::address(template, |name, key| {
        key.push_str(match name {
            "type" => ty.as_deref().unwrap_or(&output.content_type),
            "subject" => subject.as_deref().unwrap_or_default(),
            "plant" => &output.plant,
            "route" => &output.route,
            _ => return false,
        });
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::Confirmation;

    /// The broker's return of the message sent to `exchange` with `routing_key` and `id`.
    fn returned(exchange: &str, routing_key: &str, id: &str) -> lapin::message::BasicReturnMessage {
        let mut delivery = lapin::message::Delivery::mock(
            0,
            exchange.into(),
            routing_key.into(),
            false,
            Vec::new(),
        );
        delivery.properties = BasicProperties::default().with_message_id(id.into());
        lapin::message::BasicReturnMessage {
            delivery,
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        }
    }

    #[test]
    fn a_return_is_judged_by_the_message_it_names_not_the_confirm_it_came_with() {
        let sent = vec![
            vec![key("ev", "a", "a-1"), key("ev", "a", "a-2")],
            vec![key("ev", "b", "b-1")],
        ];
        // b-1's return came attached to a-2's confirm (lapin's order), b-1's own ack is bare.
        let answers = vec![
            vec![
                Ok(Confirmation::Ack(None)),
                Ok(Confirmation::Ack(Some(returned("ev", "b", "b-1")))),
            ],
            vec![Ok(Confirmation::Ack(None))],
        ];
        let verdicts = judge(&sent, &answers, false);
        assert!(verdicts[0].is_ok(), "a-1 and a-2 were routed");
        assert!(
            matches!(verdicts[1], Err(Fate::Returned(0))),
            "b-1 came back"
        );

        // A return naming none of the batch's messages: any of them may be the one returned.
        let answers = vec![
            vec![Ok(Confirmation::Ack(None)), Ok(Confirmation::Ack(None))],
            vec![Ok(Confirmation::Ack(Some(returned("ev", "b", "x-9"))))],
        ];
        let verdicts = judge(&sent, &answers, false);
        assert!(verdicts.iter().all(|v| matches!(v, Err(Fate::Returned(0)))));

        // A nack is the message's own; a failed confirm fails its publish.
        let answers = vec![
            vec![Ok(Confirmation::Ack(None)), Ok(Confirmation::Nack(None))],
            vec![Err(lapin::Error::from(
                lapin::ErrorKind::InvalidChannelState(lapin::ChannelState::Closed, "gone"),
            ))],
        ];
        let verdicts = judge(&sent, &answers, false);
        assert!(matches!(verdicts[0], Err(Fate::Nacked(1))));
        assert!(matches!(verdicts[1], Err(Fate::Broker(_))));

        // A publish of the batch was given up half-way: its dropped confirms may have carried
        // b-1's return, so b-1's bare ack proves nothing; a-2's own return still names it.
        let answers = vec![
            vec![
                Ok(Confirmation::Ack(None)),
                Ok(Confirmation::Ack(Some(returned("ev", "a", "a-2")))),
            ],
            vec![Ok(Confirmation::Ack(None))],
        ];
        let verdicts = judge(&sent, &answers, true);
        assert!(matches!(verdicts[0], Err(Fate::Returned(1))));
        assert!(matches!(verdicts[1], Err(Fate::Unknown)));
    }

    #[test]
    fn routing_keys_come_from_the_event() {
        let output = Message {
            id: "e-1".into(),
            plant: "plant-north".into(),
            route: "mes".into(),
            content_type: "application/cloudevents+json".into(),
            headers: Vec::new(),
            body: br#"{"type":"millrace.production.completed.v1","subject":"WO-1"}"#.to_vec(),
        };
        assert_eq!(
            routing_key("{plant}.{type}", &output),
            "plant-north.millrace.production.completed.v1"
        );
        assert_eq!(routing_key("{route}/{subject}", &output), "mes/WO-1");
        let plain = Message {
            body: b"x".to_vec(),
            content_type: "text/plain".into(),
            ..output
        };
        assert_eq!(routing_key("{type}.{subject}", &plain), "text/plain.");
        // Braces that name nothing stay; a value naming a placeholder is not filled in turn.
        assert_eq!(routing_key("{x}.{plant}{", &plain), "{x}.plant-north{");
        assert_eq!(
            routing_key("{{plant}.{{type}}", &plain),
            "{plant-north.{text/plain}"
        );
        let naming = Message {
            body: br#"{"type":"t.{subject}.{plant}","subject":"{route}"}"#.to_vec(),
            ..plain
        };
        assert_eq!(
            routing_key("{type}/{subject}/{route}", &naming),
            "t.{subject}.{plant}/{route}/mes"
        );
        // An attribute of another kind does not cost the event its other attribute: a number
        // is its text, anything else is absent.
        let numbered = Message {
            body: br#"{"type":"t.count","subject":4711}"#.to_vec(),
            ..naming
        };
        assert_eq!(routing_key("{type}.{subject}", &numbered), "t.count.4711");
        let listed = Message {
            body: br#"{"subject":["a"],"type":"t.list","data":{"subject":1}}"#.to_vec(),
            ..numbered
        };
        assert_eq!(routing_key("{type}.{subject}", &listed), "t.list.");
        let typed = Message {
            body: br#"{"type":{"v":1},"subject":"WO-2"}"#.to_vec(),
            ..listed
        };
        assert_eq!(routing_key("{type}.{subject}", &typed), "text/plain.WO-2");
    }
}
