//! Activations shared by hosts on one broker: an activation or rollback made on one host (admin
//! API or drop folder) is published, with the component's bytes, to the fanout exchange
//! `millrace.control`; every host has its own durable queue there (`millrace.control.HOST_ID`,
//! `host.id`) and applies what arrives — the same gate (origin `broadcast`), then the same
//! activation — in the order it was published. A host that is away finds the activations
//! waiting in its queue when it connects again (the newest
//! [`CONTROL_QUEUE_KEPT`](super::topology::CONTROL_QUEUE_KEPT) of them, within
//! [`CONTROL_QUEUE_BYTES`](super::topology::CONTROL_QUEUE_BYTES); what the bounds drop, the
//! retained activations below still give).
//!
//! Announcements are not broadcast again by the hosts that apply them, and a host skips its
//! own. A host whose routes do not run the plugin on that plant skips it; one whose gate refuses
//! it keeps its version and records the refusal. Runs on the broker session (hosts whose routes
//! use the broker); an activation made while the broker is away is announced on the next
//! session, when the retained one (below) is older or missing.
//!
//! **Order.** Each activation carries a stamp ([`Stamp`]: milliseconds never below one past the
//! slot's last stamp known to the host, then the id of the host it was made on), recorded with
//! it on every host that applies it. An announcement or a retained activation is applied only
//! when its stamp is later than the slot's last activation here: hosts activating one slot at
//! about the same time all end on the later one, and nothing older (a retained read, a queue's
//! backlog) undoes a newer activation. Announcements without a stamp (hosts of an earlier
//! release) are applied as they come.
//!
//! **The last activation is retained** for hosts that join later or return after their control
//! queue was lost: each announcement is also kept, bytes and all, in the queue
//! `millrace.control.last.PLANT/PLUGIN`. On each session a host first binds its control queue
//! (so nothing announced from then on is missed), then reads the retained activations of every
//! plant and plugin its routes run, takes the latest by its stamp and applies it like an
//! announcement (skipped when that exact component already runs), then follows its queue. A
//! read takes the messages without acknowledging them, removes (acknowledges) each as soon as
//! it holds a later one, and anything that is not an activation whose bytes have its digest,
//! and gives the latest back by closing its channel; a host that announces
//! reads the queue so right after, so it holds about one activation. Its length bound
//! ([`LAST_VALUES_KEPT`](super::topology::LAST_VALUES_KEPT), `x-max-length`) is a safety limit
//! only: on a quorum queue, a message given back goes to the front and the bound drops from the
//! front, so two readers giving back out of order around an announcement would have the bound
//! drop the newer one (measured on 3.10.8 with room for one, and with room for four once four
//! were held, with `nack` and with closing the channel alike). A host that finds the queue
//! empty tries twice more 50 ms apart, in case another host's read held the messages. Two hosts
//! reading at once while the queue holds two or more may split them, and the one that read only
//! older ones applies those; an empty read counts as checked. So every session reads every slot
//! once more [`SETTLE`] to twice that after its first read checked them all (drawn per
//! session), between the announcements it applies: by then the other readers have given the
//! messages back. A reader holding them across both reads leaves a new host on its version
//! until the next periodic read (`host.amqp_retained_reread_s`, default every 5 minutes). Every
//! read, periodic ones too, answers an empty queue or an older activation with this host's own
//! last activation of the slot when it was made here: a retained activation lost from its queue
//! is back within a period.
//! The reads of one session wait at most [`CATCH_UP_LIMIT`] for the broker together: past it (a
//! broker slow to answer, e.g. a quorum queue without a leader) the host logs the slots it did
//! not check and consumes with the versions it runs. Those slots, and any whose read failed, are
//! read again every [`CATCH_UP_RETRY`] (each time within the same limit) until every one is
//! checked or the session ends; only then does the host apply what its own queue holds, which
//! waits there meanwhile (so what it applies last is still the latest announced).
//!
//! **Sealed with the fleet's key.** With `host.control_key_env` set ([`ControlKey`]), every
//! activation announced here carries a seal over its headers, and only activations sealed with
//! the same key are applied from the control queue or counted in a retained queue; others are
//! dropped or removed there like anything that is not an activation. Without the key, anything
//! that looks like an activation is taken, and the gate is the only check.
//!
//! A configuration reload that changes no broker route keeps the session: every
//! [`ADDED_SLOTS_EVERY`] the session looks for slots the routes did not run at its last look,
//! declares their retained queues (each on its own) and reads them as a first read does,
//! [`PERIODIC_SLOTS`] at a time, then once more at the first look [`settle_after`] later
//! ([`Added`]); from then on they are in the periodic rounds. A slot taken away and given back
//! between two looks waits for the next periodic round.

use crate::amqp::publisher::header_string;
use crate::amqp::session::{BrokerLink, Link, Session};
use crate::control::deploy::{DeployError, Deployer, Slot};
use crate::control::registry::{Activation, RegistryError, Stamp};
use futures_lite::StreamExt;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use std::sync::Arc;

/// Longest the reads of the retained activations may take on one session.
pub const CATCH_UP_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Pause before the retained activations left unchecked are read again.
pub const CATCH_UP_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// The least wait before a session's second read of the retained activations
/// ([`settle_after`]).
pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(3);

/// The fanout exchange activations are announced on.
pub const EXCHANGE: &str = "millrace.control";

/// The queue of host `id` on [`EXCHANGE`].
pub fn queue(id: &str) -> String {
    format!("{EXCHANGE}.{id}")
}

/// The queue that retains the last activation of `plugin` on `plant`. Both names may contain
/// `.`, neither `/`, which joins them: plant `a.b` with plugin `c` and plant `a` with plugin
/// `b.c` have a queue each.
pub fn last(plant: &str, plugin: &str) -> String {
    format!("{EXCHANGE}.last.{plant}/{plugin}")
}

const FROM: &str = "x-millrace-host";

/// The header carrying an activation's seal ([`ControlKey`]), hex.
const SEAL: &str = "seal";

/// The key the hosts of one fleet share to seal their activations (`host.control_key_env`):
/// with it, a host applies or retains only activations sealed with the same key, so whoever may
/// publish to the broker without it cannot offer the hosts an activation. An HMAC-SHA256 over
/// the headers a host acts on (from, plant, plugin, version, digest, action, by, stamp; others
/// are read by no host); the bytes are bound by the digest.
#[derive(Clone)]
pub struct ControlKey(Vec<u8>);

impl std::fmt::Debug for ControlKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ControlKey(..)")
    }
}

impl ControlKey {
    /// The fewest bytes a key may have.
    pub const MIN_BYTES: usize = 32;

    pub fn new(key: &[u8]) -> Result<ControlKey, String> {
        if key.len() < Self::MIN_BYTES {
            return Err(format!(
                "has {} bytes; a control key has at least {}",
                key.len(),
                Self::MIN_BYTES
            ));
        }
        Ok(ControlKey(key.to_vec()))
    }

    /// A key written in hex (`openssl rand -hex 32` makes one): random bytes, not a passphrase,
    /// so that its fingerprint in the log does not help guess it.
    pub fn from_hex(text: &str) -> Result<ControlKey, String> {
        let bytes = hex::decode(text.trim()).map_err(|_| {
            "is not hex; write at least 32 random bytes in hex (`openssl rand -hex 32` makes them)"
                .to_string()
        })?;
        ControlKey::new(&bytes)
    }

    /// A short name for the key, the same on every host that has it (a hash; it does not give
    /// the key away), for the log and to tell a changed key.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let hash = sha2::Sha256::new()
            .chain_update(b"millrace control key")
            .chain_update(&self.0)
            .finalize();
        hex::encode(&hash[..8])
    }

    /// The seal of `note`, ready to give its tag or check one.
    fn seal(&self, note: &Note) -> hmac::Hmac<sha2::Sha256> {
        use hmac::Mac;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        let (ms, host) = match &note.stamp {
            Some(stamp) => (stamp.ms.to_string(), stamp.host.as_str()),
            None => (String::new(), ""),
        };
        mac.update(b"millrace activation 1");
        // Each field with its length first: no two activations give the same input.
        for field in [
            note.from.as_str(),
            &note.plant,
            &note.plugin,
            &note.version,
            &note.digest,
            &note.action,
            &note.by,
            &ms,
            host,
        ] {
            mac.update(&(field.len() as u64).to_be_bytes());
            mac.update(field.as_bytes());
        }
        mac
    }
}

/// Who this host is among the hosts on the broker: its id (`host.id`), the fleet's
/// [`ControlKey`] it seals with, if set, and the keys whose seals it also takes while the fleet
/// changes keys (`host.control_key_also_env`).
#[derive(Debug)]
pub struct Fleet {
    pub id: String,
    pub key: Option<ControlKey>,
    pub also: Vec<ControlKey>,
}

impl Fleet {
    /// Whether `note`, read from `headers`, may be applied or retained here: always without a
    /// key; with one, only when sealed with it or with one of the keys also taken.
    fn vouches(&self, note: &Note, headers: &FieldTable) -> bool {
        use hmac::Mac;
        let Some(key) = &self.key else {
            return true;
        };
        let Some(tag) = header_string(headers, SEAL).and_then(|tag| hex::decode(tag).ok()) else {
            return false;
        };
        std::iter::once(key)
            .chain(&self.also)
            .any(|key| key.seal(note).verify_slice(&tag).is_ok())
    }
}

/// One announced activation, as carried in the message headers.
#[derive(Debug)]
struct Note {
    from: String,
    plant: String,
    plugin: String,
    version: String,
    digest: String,
    action: String,
    by: String,
    /// The activation's place in its slot's order; `None` from a host of an earlier release.
    stamp: Option<Stamp>,
}

impl Note {
    /// The note as headers, sealed with `key` if there is one.
    fn headers(&self, key: Option<&ControlKey>) -> FieldTable {
        let mut table = FieldTable::default();
        for (name, value) in [
            (FROM, &self.from),
            ("plant", &self.plant),
            ("plugin", &self.plugin),
            ("version", &self.version),
            ("digest", &self.digest),
            ("action", &self.action),
            ("by", &self.by),
        ] {
            table.insert(name.into(), AMQPValue::LongString(value.as_str().into()));
        }
        if let Some(stamp) = &self.stamp {
            table.insert("stamp-ms".into(), AMQPValue::LongLongInt(stamp.ms));
            let host = AMQPValue::LongString(stamp.host.as_str().into());
            table.insert("stamp-host".into(), host);
        }
        if let Some(key) = key {
            use hmac::Mac;
            let tag = hex::encode(key.seal(self).finalize().into_bytes());
            table.insert(SEAL.into(), AMQPValue::LongString(tag.into()));
        }
        table
    }

    fn read(table: &FieldTable) -> Option<Note> {
        let get = |name| header_string(table, name);
        Some(Note {
            from: get(FROM)?,
            plant: get("plant")?,
            plugin: get("plugin")?,
            version: get("version")?,
            digest: get("digest")?,
            action: get("action")?,
            by: get("by")?,
            stamp: match (
                table.inner().get("stamp-ms").and_then(integer),
                get("stamp-host"),
            ) {
                (Some(ms), Some(host)) => Some(Stamp { ms, host }),
                _ => None,
            },
        })
    }
}

/// A header's integer, whatever width a broker or client gave it (a number in a string too).
fn integer(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
        _ => None,
    }
}

/// Tell the other hosts on the broker about each activation made here, as the deployer
/// reports them ([`Deployer::announcements`]), until the deployer is gone.
pub async fn announce_all(link: Arc<BrokerLink>, deployer: Arc<Deployer>, fleet: Arc<Fleet>) {
    let mut activations = deployer.announcements();
    // Each slot's last activation announced, since when, and how often since: the same one is
    // sent at most ANNOUNCED_PER_WINDOW times in ANNOUNCED_WINDOW (an older activation
    // announced after it is answered once; older ones replayed to this host, sealed or not,
    // would otherwise have it sent again, bytes and all, once per replay).
    let mut announced = std::collections::HashMap::new();
    while let Some(activation) = activations.recv().await {
        let slot = (activation.plant.clone(), activation.plugin.clone());
        let now = tokio::time::Instant::now();
        let sent = match announced.get(&slot) {
            Some((stamp, since, sent))
                if *stamp == activation.stamp && now.duration_since(*since) < ANNOUNCED_WINDOW =>
            {
                *sent
            }
            _ => {
                announced.insert(slot.clone(), (activation.stamp.clone(), now, 0));
                0
            }
        };
        if sent >= ANNOUNCED_PER_WINDOW {
            tracing::debug!(plant = %activation.plant, plugin = %activation.plugin, version = %activation.version, "announced moments ago; not again yet");
            continue;
        }
        if announce(&link, &deployer, &fleet, &activation).await
            && let Some((_, _, sent)) = announced.get_mut(&slot)
        {
            *sent += 1;
        }
    }
}

/// The window within which one activation is announced at most [`ANNOUNCED_PER_WINDOW`] times.
const ANNOUNCED_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);
const ANNOUNCED_PER_WINDOW: u32 = 2;

/// Tell the other hosts on the broker that `activation` happened here (best effort: logged when
/// the broker does not confirm). While the broker is away it waits for the next session, and
/// then announces it only if it is still the slot's last activation here.
/// Whether the broker took it.
async fn announce(
    link: &BrokerLink,
    deployer: &Deployer,
    fleet: &Fleet,
    activation: &Activation,
) -> bool {
    let session = match link.link() {
        Link::Up(session) => session,
        _ => {
            tracing::warn!(plant = %activation.plant, plugin = %activation.plugin, version = %activation.version, "the broker is away: this activation is announced once it is back");
            let mut state = link.watch();
            let Ok(up) = state.wait_for(|l| matches!(l, Link::Up(_))).await else {
                return false;
            };
            let Link::Up(session) = up.clone() else {
                return false;
            };
            session
        }
    };
    // One replaced meanwhile (while the broker was away, or by the next one made here) is not
    // announced: its successor is, and an older one must not be the one the broker retains.
    let latest = deployer
        .registry
        .stamp(&activation.plant, &activation.plugin);
    if latest.is_ok_and(|latest| latest != activation.stamp) {
        tracing::info!(plant = %activation.plant, plugin = %activation.plugin, version = %activation.version, "an activation since replaced here; not announced");
        return false;
    }
    let note = Note {
        from: fleet.id.clone(),
        plant: activation.plant.clone(),
        plugin: activation.plugin.clone(),
        version: activation.version.clone(),
        digest: activation.digest.clone(),
        action: activation.action.clone(),
        by: activation.by.clone(),
        stamp: Some(activation.stamp.clone()),
    };
    let blob = deployer.registry.blob(&activation.digest);
    let sent = async {
        let bytes = std::fs::read(&blob).map_err(|e| format!("{}: {e}", blob.display()))?;
        let channel = session
            .connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let retained = last(&note.plant, &note.plugin);
        let mut declarer = super::topology::Declarer::open(&session.connection, session.queues)
            .await
            .map_err(|e| e.to_string())?;
        declarer
            .exchange(EXCHANGE, lapin::ExchangeKind::Fanout)
            .await
            .map_err(|e| e.to_string())?;
        declarer
            .queue(&retained, super::topology::Role::LastValue)
            .await
            .map_err(|e| e.to_string())?;
        declarer.close().await;
        // To every host's queue, then as the retained last value (default exchange).
        for (exchange, key) in [(EXCHANGE, ""), ("", retained.as_str())] {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    key.into(),
                    BasicPublishOptions::default(),
                    &bytes,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/wasm".into())
                        .with_headers(note.headers(fleet.key.as_ref())),
                )
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            if confirm.is_nack() {
                return Err("the broker refused it".to_string());
            }
        }
        super::session::close_channel(&channel, "announced").await;
        // What the queue held before this one is older: removed now, so the queue holds about
        // one activation and a host's read at connecting stays short.
        if let Err(e) = read_retained(&session.connection, fleet, &note.plant, &note.plugin).await {
            tracing::debug!(queue = %retained, error = %e, "the retained activations were not trimmed; the next read does it");
        }
        Ok::<_, String>(())
    };
    match sent.await {
        Ok(()) => {
            tracing::info!(plant = %note.plant, plugin = %note.plugin, version = %note.version, "activation announced to the other hosts");
            true
        }
        Err(e) => {
            tracing::warn!(plant = %note.plant, plugin = %note.plugin, version = %note.version, error = %e, "this activation could not be announced to other hosts");
            false
        }
    }
}

/// Declare this host's control queue and start applying the activations other hosts announce,
/// for as long as `session` lasts (the returned task), reading the retained ones again every
/// `reread`. `None`, logged, if the broker refuses.
pub async fn follow(
    deployer: Arc<Deployer>,
    fleet: Arc<Fleet>,
    session: &Session,
    reread: Option<std::time::Duration>,
) -> Option<Following> {
    let queue = queue(&fleet.id);
    let started = async {
        let mut declarer =
            super::topology::Declarer::open(&session.connection, session.queues).await?;
        declarer
            .exchange(EXCHANGE, lapin::ExchangeKind::Fanout)
            .await?;
        declarer
            .queue(&queue, super::topology::Role::Control)
            .await?;
        declarer.bind(&queue, EXCHANGE, "").await?;
        let slots = running_slots(&deployer);
        declare_retained(&mut declarer, &slots).await?;
        declarer.close().await;
        let unchecked = catch_up(&deployer, &fleet, &session.connection, &slots, Pass::Start).await;
        tracing::info!(
            slots = slots.len(),
            unchecked = unchecked.len(),
            control_key = %fleet.key.as_ref().map_or("none".to_string(), ControlKey::fingerprint),
            "the retained activations read"
        );
        let channel = session.connection.create_channel().await?;
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "millrace-control".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok::<_, lapin::Error>((channel, consumer, slots, unchecked))
    };
    let (channel, consumer, slots, mut unchecked) = match started.await {
        Ok(started) => started,
        Err(e) => {
            tracing::warn!(queue = %queue, error = %e, "cannot follow other hosts' activations on this session");
            return None;
        }
    };
    let session = session.clone();
    let task = async move {
        // Announcements wait in the queue until every retained activation was checked.
        while !unchecked.is_empty() {
            tokio::time::sleep(CATCH_UP_RETRY).await;
            unchecked = catch_up(
                &deployer,
                &fleet,
                &session.connection,
                &unchecked,
                Pass::Start,
            )
            .await;
        }
        let why = apply_each(&deployer, &fleet, consumer, &session, slots, reread).await;
        // Not following announcements is not a state to stay in: a new session follows again.
        session.lost(why);
    };
    Some(Following {
        task: tokio::spawn(task),
        channel,
    })
}

/// The (plant, plugin) slots the routes run now, sorted, each once.
fn running_slots(deployer: &Deployer) -> Vec<(String, String)> {
    let mut slots: Vec<(String, String)> = deployer
        .routes()
        .all()
        .iter()
        .flat_map(|r| r.steps.iter().map(|s| (r.plant.clone(), s.id.name.clone())))
        .collect();
    slots.sort();
    slots.dedup();
    slots
}

/// Declare the queue retaining the last activation of each of `slots`.
async fn declare_retained(
    declarer: &mut super::topology::Declarer<'_>,
    slots: &[(String, String)],
) -> Result<(), lapin::Error> {
    for (plant, plugin) in slots {
        declarer
            .queue(&last(plant, plugin), super::topology::Role::LastValue)
            .await?;
    }
    Ok(())
}

/// Slots a configuration reload gave the routes while a session lasts (a reload that changes no
/// broker route keeps the session): found at each look, every [`ADDED_SLOTS_EVERY`], their
/// retained queues declared and read as a session's first read does, [`PERIODIC_SLOTS`] at a
/// time, then read once more [`settle_after`] later, as a session's own slots are.
struct Added {
    /// The slots the routes ran at the last look, sorted.
    running: Vec<(String, String)>,
    /// Found, not read yet (or their declare or read failed: tried at a later look).
    first: Vec<(String, String)>,
    /// Read once; when to read again.
    second: Vec<((String, String), tokio::time::Instant)>,
}

/// What a look did, for when the next one comes.
enum Looked {
    /// Slots are left to read and nothing failed: look again soon.
    More,
    /// Nothing left, or something failed: the next look in [`ADDED_SLOTS_EVERY`].
    Done,
}

impl Added {
    fn new(running: Vec<(String, String)>) -> Added {
        Added {
            running,
            first: Vec::new(),
            second: Vec::new(),
        }
    }

    /// One look: the second reads that are due, then the first reads of up to
    /// [`PERIODIC_SLOTS`] slots found; each read slot joins `slots` (the periodic rounds').
    async fn look(
        &mut self,
        deployer: &Arc<Deployer>,
        fleet: &Fleet,
        session: &Session,
        slots: &mut Vec<(String, String)>,
    ) -> Looked {
        let now_running = running_slots(deployer);
        for slot in &now_running {
            if self.running.binary_search(slot).is_err() && !self.first.contains(slot) {
                self.first.push(slot.clone());
            }
        }
        self.running = now_running;
        // A slot a later reload took away again is not read.
        let running = &self.running;
        self.first
            .retain(|slot| running.binary_search(slot).is_ok());
        self.second
            .retain(|(slot, _)| running.binary_search(slot).is_ok());

        let now = tokio::time::Instant::now();
        let mut due = Vec::new();
        self.second.retain(|(slot, at)| {
            let take = *at <= now && due.len() < PERIODIC_SLOTS;
            if take {
                due.push(slot.clone());
            }
            !take
        });
        let mut failed = false;
        if !due.is_empty() {
            let unchecked = catch_up(deployer, fleet, &session.connection, &due, Pass::Start).await;
            failed |= !unchecked.is_empty();
            let again = tokio::time::Instant::now() + CATCH_UP_RETRY;
            self.second
                .extend(unchecked.into_iter().map(|slot| (slot, again)));
        }

        let step: Vec<(String, String)> = self
            .first
            .drain(..self.first.len().min(PERIODIC_SLOTS))
            .collect();
        if !step.is_empty() {
            let unchecked = catch_up_added(deployer, fleet, session, &step).await;
            failed |= !unchecked.is_empty();
            let settled = tokio::time::Instant::now() + settle_after();
            for slot in step {
                if unchecked.contains(&slot) {
                    self.first.push(slot);
                    continue;
                }
                self.second.push((slot.clone(), settled));
                if let Err(at) = slots.binary_search(&slot) {
                    slots.insert(at, slot);
                }
            }
        }
        if !failed && !self.first.is_empty() {
            Looked::More
        } else {
            Looked::Done
        }
    }
}

/// Declare and read, as a session's first read does, the retained activations of `added`
/// (slots a reload added): each queue declared on its own, so one refused does not stop the
/// others, all within [`CATCH_UP_LIMIT`], then the reads within the same limit again. Returns
/// the slots not checked.
async fn catch_up_added(
    deployer: &Arc<Deployer>,
    fleet: &Fleet,
    session: &Session,
    added: &[(String, String)],
) -> Vec<(String, String)> {
    let started = tokio::time::Instant::now();
    let (mut declared, mut unchecked) = (Vec::new(), Vec::new());
    let mut declarer: Option<super::topology::Declarer<'_>> = None;
    for (n, (plant, plugin)) in added.iter().enumerate() {
        let left = CATCH_UP_LIMIT.saturating_sub(started.elapsed());
        let queue = last(plant, plugin);
        let done = tokio::time::timeout(left, async {
            let open = match declarer.take() {
                Some(open) => open,
                None => {
                    super::topology::Declarer::open(&session.connection, session.queues).await?
                }
            };
            let open = declarer.insert(open);
            open.queue(&queue, super::topology::Role::LastValue)
                .await
                .map(|_| ())
        })
        .await;
        match done {
            Ok(Ok(())) => declared.push((plant.clone(), plugin.clone())),
            Ok(Err(e)) => {
                tracing::warn!(queue = %queue, error = %e, retry_s = ADDED_SLOTS_EVERY.as_secs(), "cannot declare the retained activation's queue of a slot a reload added; trying again later");
                unchecked.push((plant.clone(), plugin.clone()));
                // Its channel may be closed by the refusal: the next slot gets a new one.
                if let Some(open) = declarer.take() {
                    open.close().await;
                }
            }
            Err(_) => {
                let named: Vec<String> =
                    added[n..].iter().map(|(p, g)| format!("{p}/{g}")).collect();
                tracing::warn!(within_s = CATCH_UP_LIMIT.as_secs(), unchecked = %named.join(","), retry_s = ADDED_SLOTS_EVERY.as_secs(), "the broker did not declare the retained activations' queues of slots a reload added in time; trying again later");
                unchecked.extend(added[n..].iter().cloned());
                if let Some(open) = declarer.take() {
                    let _ = tokio::time::timeout(CATCH_UP_RETRY, open.close()).await;
                }
                break;
            }
        }
    }
    if let Some(open) = declarer.take() {
        open.close().await;
    }
    if declared.is_empty() {
        return unchecked;
    }
    let not_read = catch_up(deployer, fleet, &session.connection, &declared, Pass::Start).await;
    tracing::info!(
        slots = declared.len(),
        unchecked = not_read.len(),
        "the retained activations of slots a reload added read"
    );
    unchecked.extend(not_read);
    unchecked
}

/// When a session's second read of the retained activations starts: [`SETTLE`] and up to as
/// much again, drawn anew for each session (hosts that connect at once, after a broker restart,
/// mostly do not read again at once).
fn settle_after() -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    let draw = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let spread = u64::try_from(SETTLE.as_millis()).unwrap_or(u64::MAX);
    SETTLE + std::time::Duration::from_millis(draw % spread.max(1))
}

/// Other hosts' activations being applied on a session: the task and its consumer's channel.
pub struct Following {
    task: tokio::task::JoinHandle<()>,
    channel: lapin::Channel,
}

impl Following {
    /// Stop; when the host is `stopping`, the channel is closed first (before the connection
    /// is), else it goes with the lost session. A control message not yet acknowledged goes
    /// back to the queue, to be applied on the next session.
    pub async fn stop(self, stopping: bool) {
        if stopping {
            super::session::close_channel(&self.channel, "session ends").await;
        }
        self.task.abort();
    }
}

/// Which read of the retained activations [`catch_up`] makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// A session's first and second reads (and their retries every [`CATCH_UP_RETRY`]).
    Start,
    /// A periodic read (`host.amqp_retained_reread_s`), made of `PERIODIC_SLOTS` slots at a
    /// time.
    Periodic { again_s: u64 },
}

/// How often a session looks for slots a configuration reload gave the routes (a reload that
/// changes no broker route keeps the session), to read their retained activations.
const ADDED_SLOTS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The pause between two looks while slots a reload added are left to read.
const ADDED_SLOTS_STEP: std::time::Duration = std::time::Duration::from_millis(100);

/// Slots read at each step of a periodic read, so the control queue's announcements are
/// applied between the steps.
const PERIODIC_SLOTS: usize = 16;

/// The steps of a periodic round over `slots` slots (at least one).
fn round_steps(slots: usize) -> u32 {
    u32::try_from(slots.div_ceil(PERIODIC_SLOTS).max(1)).unwrap_or(u32::MAX)
}

/// Apply the retained last activation of each of `slots` (plant, plugin) that differs from what
/// runs here and is later than the slot's last activation here; announce this host's own last
/// activation of a slot when the retained one is older or missing (made while the broker was
/// away), as `pass` says: see the module's notes. Returns the slots not checked: those past the
/// time limit and those whose read failed.
async fn catch_up(
    deployer: &Arc<Deployer>,
    fleet: &Fleet,
    connection: &lapin::Connection,
    slots: &[(String, String)],
    pass: Pass,
) -> Vec<(String, String)> {
    let retry_s = match pass {
        Pass::Start => CATCH_UP_RETRY.as_secs(),
        Pass::Periodic { again_s } => again_s,
    };
    // An empty queue is read twice more 50 ms apart (another reader may hold its message),
    // then an empty or older one has this host's own last activation of the slot announced
    // again: so a retained activation lost (pushed out of its queue, the queue deleted) is
    // back within a period, not at the next session of the host that made it.
    let attempts = 3;
    let mut unchecked = Vec::new();
    // Only the time spent waiting for the broker counts, not applying what was read.
    let mut left = CATCH_UP_LIMIT;
    for (n, (plant, plugin)) in slots.iter().enumerate() {
        let queue = last(plant, plugin);
        let (mut found, mut failed) = (None, false);
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            let asked = tokio::time::Instant::now();
            let read =
                tokio::time::timeout(left, read_retained(connection, fleet, plant, plugin)).await;
            left = left.saturating_sub(asked.elapsed());
            let Ok(read) = read else {
                let named: Vec<String> =
                    slots[n..].iter().map(|(p, g)| format!("{p}/{g}")).collect();
                tracing::warn!(
                    within_s = CATCH_UP_LIMIT.as_secs(),
                    unchecked = %named.join(","),
                    retry_s,
                    "the broker did not give the retained activations in time; running the versions this host has until it does"
                );
                unchecked.extend(slots[n..].iter().cloned());
                return unchecked;
            };
            match read {
                Ok(Some(message)) => {
                    found = Some(message);
                    break;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(queue = %queue, error = %e, retry_s, "cannot read the last activation retained on the broker; trying again later");
                    unchecked.push((plant.clone(), plugin.clone()));
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            announce_if_missing(
                deployer,
                &fleet.id,
                plant,
                plugin,
                found.as_ref().map(|f| &f.0),
            );
        }
        let Some((note, bytes)) = found else {
            continue;
        };
        let slot = Slot {
            plant: &note.plant,
            plugin: &note.plugin,
        };
        if let Some(stamp) = &note.stamp
            && !deployer.is_later(slot, stamp).unwrap_or(true)
        {
            continue;
        }
        let running = deployer
            .routes()
            .running(&note.plant, &note.plugin)
            .map(|s| s.id.digest.clone());
        // A stamped later one is applied even on the same component, so that its stamp is the
        // slot's here.
        if note.stamp.is_none() && running.as_deref() == Some(note.digest.as_str()) {
            continue;
        }
        tracing::info!(plant = %note.plant, plugin = %note.plugin, version = %note.version, from = %note.from, "applying the last activation retained on the broker");
        let deployer = Arc::clone(deployer);
        let host_id = fleet.id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            apply(&deployer, &host_id, &note, &bytes, &Default::default())
        })
        .await;
    }
    unchecked
}

/// Announce this host's last activation of `plant`'s `plugin` again when it was made here and
/// `retained` (the broker's retained one, or one just announced) is older or missing: it was
/// made while the broker was away, its announcement was lost, or an older one was published
/// after it. Others apply it once (its stamp is later than theirs); a second announcement of it
/// is skipped everywhere, and only a strictly older one brings it again, so this ends.
fn announce_if_missing(
    deployer: &Deployer,
    host_id: &str,
    plant: &str,
    plugin: &str,
    retained: Option<&Note>,
) {
    let last = match deployer.registry.history(plant, Some(plugin)) {
        Ok(mut history) => history.pop(),
        Err(e) => {
            tracing::warn!(plant, plugin, error = %e, "cannot read this slot's activations");
            return;
        }
    };
    let Some(last) = last.filter(|a| a.stamp.host == host_id) else {
        return;
    };
    let older = match retained {
        None => true,
        Some(Note {
            stamp: Some(stamp), ..
        }) => *stamp < last.stamp,
        // From a host of an earlier release: no order to compare.
        Some(_) => false,
    };
    if older {
        tracing::info!(plant, plugin, version = %last.version, "this host's last activation is later than what the broker may retain; announcing it again");
        deployer.announce(&last);
    }
}

/// The latest activation retained for `plant`'s `plugin`, read without taking it: fetched
/// unacknowledged, then given back by closing the channel (the others removed as read).
async fn read_retained(
    connection: &lapin::Connection,
    fleet: &Fleet,
    plant: &str,
    plugin: &str,
) -> Result<Option<(Note, Vec<u8>)>, String> {
    let queue = last(plant, plugin);
    let queue = queue.as_str();
    let channel = connection
        .create_channel()
        .await
        .map_err(|e| e.to_string())?;
    // The latest read: its delivery tag, note and bytes.
    let mut latest: Option<(u64, Note, Vec<u8>)> = None;
    let mut read = Ok(());
    // What the queue holds, at most its bound (and a little more, should it hold more).
    for _ in 0..super::topology::LAST_VALUES_KEPT + 2 {
        let got = channel
            .basic_get(
                queue.into(),
                lapin::options::BasicGetOptions { no_ack: false },
            )
            .await;
        let message = match got {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(e) => {
                read = Err(e.to_string());
                break;
            }
        };
        let tag = message.delivery.delivery_tag;
        // An activation of another slot is not one of this queue's, nor one the fleet's key
        // did not seal.
        let note = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|headers| {
                Note::read(headers).filter(|note| {
                    note.plant == plant && note.plugin == plugin && fleet.vouches(note, headers)
                })
            });
        // Only an activation whose bytes have its digest counts: anything else in the queue
        // (published there by other than a host) must not pass for the latest and have the
        // real one removed. Checked only for one later than the latest so far (an older one
        // is removed anyway), off the async workers (a component may be megabytes).
        let superseded = match note {
            None => {
                tracing::warn!(
                    queue,
                    sealed = fleet.key.is_some(),
                    "a retained message that is not an activation (no activation's headers, another slot's, or, with a control key, not sealed with it); removed"
                );
                Some(tag)
            }
            // Older than one read here (only stamped notes are retained in this queue; an
            // unstamped one is older than any stamped one).
            Some(note)
                if latest
                    .as_ref()
                    .is_some_and(|(_, best, _)| note.stamp <= best.stamp) =>
            {
                Some(tag)
            }
            Some(note) => {
                let bytes = message.delivery.data;
                let checked = tokio::task::spawn_blocking(move || {
                    (crate::plugin::digest(&bytes) == note.digest).then_some((note, bytes))
                })
                .await;
                match checked {
                    Ok(Some((note, bytes))) => {
                        latest.replace((tag, note, bytes)).map(|(tag, _, _)| tag)
                    }
                    Ok(None) => {
                        tracing::warn!(
                            queue,
                            "a retained message that is not an activation (bytes without its digest); removed"
                        );
                        Some(tag)
                    }
                    Err(e) => {
                        // Not held, so given back with the channel; the read did not finish.
                        read = Err(format!("cannot check a retained activation's digest: {e}"));
                        break;
                    }
                }
            }
        };
        // Removed at once (so a read cut short by the time limit still shortens the queue)
        // while the latest is held; only that is given back, by closing the channel. So the
        // queue's bound never has to drop a message: it would drop the one given back first,
        // which may be the newest (on a quorum queue, with readers giving back out of order).
        if let Some(tag) = superseded
            && let Err(e) = channel.basic_ack(tag, BasicAckOptions::default()).await
        {
            read = Err(e.to_string());
            break;
        }
    }
    super::session::close_channel(&channel, "read").await;
    read.map(|()| latest.map(|(_, note, bytes)| (note, bytes)))
}

/// Apply what arrives on the control queue until its consumer ends; returns why it ended.
/// Between deliveries, [`settle_after`] the first read, it reads the retained activations of
/// every one of `slots` once more (and those left unchecked again every [`CATCH_UP_RETRY`]): a
/// read that found a queue empty because another host's read held its messages, or that got
/// only older ones of a split, then finds the latest, by then given back. Then again every
/// `reread`, for a read held across both (the same way). One thing at a time: an announcement
/// and its retained copy are never applied at once.
async fn apply_each(
    deployer: &Arc<Deployer>,
    fleet: &Fleet,
    mut consumer: lapin::Consumer,
    session: &Session,
    mut slots: Vec<(String, String)>,
    reread: Option<std::time::Duration>,
) -> String {
    let connection = &session.connection;
    let mut again = slots.clone();
    // Slots a reload adds, and the next look for them.
    let mut added = Added::new(slots.clone());
    let look = tokio::time::sleep(ADDED_SLOTS_EVERY);
    let mut look = std::pin::pin!(look);
    // Periodic reads, once the second read is done: where the next step starts, and the
    // slots of the current round.
    let (mut periodic, mut cursor, mut round) = (false, 0, Vec::new());
    let read_again = tokio::time::sleep(settle_after());
    let mut read_again = std::pin::pin!(read_again);
    // Messages dropped or skipped from the control queue (anyone who may publish there can
    // send them, and replay sealed ones).
    let dropped = Arc::new(std::sync::Mutex::new(Dropped::default()));
    let one = |dropped: &std::sync::Mutex<Dropped>| dropped.lock().expect("dropped lock").one();
    loop {
        let delivery = tokio::select! {
            delivery = consumer.next() => delivery,
            () = &mut look => {
                let next = match added.look(deployer, fleet, session, &mut slots).await {
                    Looked::More => ADDED_SLOTS_STEP,
                    Looked::Done => ADDED_SLOTS_EVERY,
                };
                // Counted from the end of this look's reads.
                look.as_mut().reset(tokio::time::Instant::now() + next);
                continue;
            }
            () = &mut read_again, if !again.is_empty() || periodic => {
                // Each wait counts from the end of the reads before it.
                if !periodic {
                    again = catch_up(deployer, fleet, connection, &again, Pass::Start).await;
                    let now = tokio::time::Instant::now();
                    if !again.is_empty() {
                        read_again.as_mut().reset(now + CATCH_UP_RETRY);
                        continue;
                    }
                    tracing::info!(slots = slots.len(), reread_s = reread.map(|p| p.as_secs()), "the retained activations read again");
                    let Some(period) = reread else { continue };
                    periodic = true;
                    read_again.as_mut().reset(now + period / round_steps(slots.len()));
                    continue;
                }
                let period = reread.expect("periodic reads have a period");
                if cursor == 0 {
                    // A round: the slots declared on this session that a route still runs.
                    let routes = deployer.routes();
                    round = slots
                        .iter()
                        .filter(|(plant, plugin)| routes.running(plant, plugin).is_some())
                        .cloned()
                        .collect();
                }
                let step = round.len().clamp(1, PERIODIC_SLOTS);
                let end = (cursor + step).min(round.len());
                let again_s = period.as_secs();
                let _ = catch_up(deployer, fleet, connection, &round[cursor..end], Pass::Periodic { again_s }).await;
                cursor = if end >= round.len() {
                    tracing::debug!(slots = round.len(), "the retained activations read (periodic)");
                    0
                } else {
                    end
                };
                // A round's steps spread over the period.
                let now = tokio::time::Instant::now();
                read_again.as_mut().reset(now + period / round_steps(round.len()));
                continue;
            }
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => return format!("the control queue's consumer ended: {e}"),
            None => return "the control queue's consumer was cancelled".to_string(),
        };
        let headers = delivery.properties.headers().as_ref();
        let note = headers.and_then(Note::read);
        match note {
            Some(note) if headers.is_some_and(|h| !fleet.vouches(&note, h)) => {
                if let Some(since) = one(&dropped) {
                    tracing::warn!(plant = %note.plant, plugin = %note.plugin, version = %note.version, from = %note.from, dropped_unlogged = since, "an announced activation not sealed with this fleet's control key (host.control_key_env); dropped");
                }
            }
            Some(note) if note.from != fleet.id => {
                let (deployer, host_id) = (Arc::clone(deployer), fleet.id.clone());
                let (bytes, dropped) = (delivery.data.clone(), Arc::clone(&dropped));
                let _ = tokio::task::spawn_blocking(move || {
                    apply(&deployer, &host_id, &note, &bytes, &dropped)
                })
                .await;
            }
            Some(_) => {}
            None => {
                if let Some(since) = one(&dropped) {
                    tracing::warn!(
                        dropped_unlogged = since,
                        "a control message without an activation's headers; dropped"
                    );
                }
            }
        }
        if let Err(e) = delivery.acker.ack(BasicAckOptions::default()).await {
            return format!("cannot acknowledge a control message: {e}");
        }
    }
}

/// Control messages dropped, logged at most [`Dropped::LINES`] a minute: a flood of them (from
/// anyone allowed to publish to the control exchange) does not flood the log. Each line says
/// how many went unlogged before it.
#[derive(Default)]
struct Dropped {
    minute: Option<tokio::time::Instant>,
    logged: u32,
    unlogged: u64,
}

impl Dropped {
    const LINES: u32 = 10;

    /// One more dropped: `Some(unlogged before it)` when it is to be logged.
    fn one(&mut self) -> Option<u64> {
        let now = tokio::time::Instant::now();
        if self
            .minute
            .is_none_or(|start| now.duration_since(start) >= std::time::Duration::from_secs(60))
        {
            self.minute = Some(now);
            self.logged = 0;
        }
        if self.logged < Self::LINES {
            self.logged += 1;
            Some(std::mem::take(&mut self.unlogged))
        } else {
            self.unlogged += 1;
            None
        }
    }
}

/// Make another host's activation ours: keep the version (gated) if we lack it, then activate.
/// What is dropped or skipped without effect (bytes without their digest, activations not
/// later than the slot's: a replay of sealed ones) is logged as `dropped` allows.
fn apply(
    d: &Deployer,
    host_id: &str,
    note: &Note,
    bytes: &[u8],
    dropped: &std::sync::Mutex<Dropped>,
) {
    let one = || dropped.lock().expect("dropped lock").one();
    if crate::plugin::digest(bytes) != note.digest {
        if let Some(since) = one() {
            tracing::warn!(plant = %note.plant, plugin = %note.plugin, version = %note.version, from = %note.from, digest = %note.digest, dropped_unlogged = since, "an announced activation whose bytes do not have its digest; ignored");
        }
        return;
    }
    if d.routes().running(&note.plant, &note.plugin).is_none() {
        tracing::debug!(plant = %note.plant, plugin = %note.plugin, "announced activation is for a plugin no route here runs");
        return;
    }
    let slot = Slot {
        plant: &note.plant,
        plugin: &note.plugin,
    };
    // An older one is not even kept (nor gated): it would never run. When this host made the
    // later one, it announces that again: the older one may now be what the broker retains
    // (published after it).
    if let Some(stamp) = &note.stamp
        && !d.is_later(slot, stamp).unwrap_or(true)
    {
        if let Some(since) = one() {
            tracing::info!(plant = %note.plant, plugin = %note.plugin, version = %note.version, from = %note.from, dropped_unlogged = since, "an announced activation not later than this slot's last one; skipped");
        }
        announce_if_missing(d, host_id, &note.plant, &note.plugin, Some(note));
        return;
    }
    let by = format!("{} via {}", note.by, note.from);
    let kept = match d.registry.find(&note.plant, &note.plugin, &note.version) {
        Ok(kept) if kept.digest != note.digest => Err(RegistryError::VersionTaken {
            plant: kept.plant,
            plugin: kept.plugin,
            version: kept.version,
            digest: kept.digest,
        }
        .into()),
        Ok(_) => Ok(()),
        Err(RegistryError::UnknownVersion { .. }) => {
            d.deploy(&note.plant, bytes, &by, "broadcast").map(|_| ())
        }
        Err(e) => Err(DeployError::from(e)),
    };
    let stamp = note.stamp.clone().ok_or(note.from.as_str());
    let done = kept.and_then(|()| d.apply_announced(slot, &note.version, &by, &note.action, stamp));
    match done {
        // Another activation came in between: logged by the deployer.
        Ok(None) => {}
        Ok(Some(_)) => {
            tracing::info!(plant = %note.plant, plugin = %note.plugin, version = %note.version, from = %note.from, "activation from another host applied")
        }
        Err(e) => {
            tracing::warn!(plant = %note.plant, plugin = %note.plugin, version = %note.version, from = %note.from, error = %e, "activation from another host refused; this host keeps its version")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note() -> Note {
        Note {
            from: "host-a".into(),
            plant: "plant-a".into(),
            plugin: "stamp".into(),
            version: "2.0.0".into(),
            digest: "sha256:00".into(),
            action: "activate".into(),
            by: "ops".into(),
            stamp: Some(Stamp {
                ms: 1_000,
                host: "host-a".into(),
            }),
        }
    }

    #[test]
    fn dropped_control_messages_are_logged_at_most_ten_a_minute() {
        let mut dropped = Dropped::default();
        let logged: Vec<Option<u64>> = (0..25).map(|_| dropped.one()).collect();
        assert_eq!(logged[..10], [Some(0); 10]);
        assert!(logged[10..].iter().all(Option::is_none));
        // A minute on, the next is logged with the count of those that were not.
        dropped.minute = Some(tokio::time::Instant::now() - std::time::Duration::from_secs(61));
        assert_eq!(dropped.one(), Some(15));
        assert_eq!(dropped.one(), Some(0));
    }

    #[test]
    fn only_activations_sealed_with_the_fleets_key_are_vouched_for() {
        assert!(ControlKey::new(&[7; ControlKey::MIN_BYTES - 1]).is_err());
        assert!(ControlKey::from_hex(&"ab".repeat(31)).is_err());
        assert!(ControlKey::from_hex("a passphrase of more than 32 bytes").is_err());
        assert!(ControlKey::from_hex(&format!("{}\n", "ab".repeat(32))).is_ok());
        let key = ControlKey::new(&[7; ControlKey::MIN_BYTES]).unwrap();
        let other = ControlKey::new(&[8; ControlKey::MIN_BYTES]).unwrap();
        let fleet = Fleet {
            id: "host-b".into(),
            key: Some(key.clone()),
            also: Vec::new(),
        };
        let sealed = note().headers(Some(&key));
        assert!(fleet.vouches(&note(), &sealed));
        // Not sealed, sealed with another key, or any field changed after sealing: refused.
        assert!(!fleet.vouches(&note(), &note().headers(None)));
        assert!(!fleet.vouches(&note(), &note().headers(Some(&other))));
        let changes: [fn(&mut Note); 10] = [
            |n| n.from = "host-x".into(),
            |n| n.plant = "plant-b".into(),
            |n| n.plugin = "other".into(),
            |n| n.version = "1.0.0".into(),
            |n| n.digest = "sha256:01".into(),
            |n| n.action = "rollback".into(),
            |n| n.by = "someone".into(),
            |n| n.stamp.as_mut().unwrap().ms += 1_000_000,
            |n| n.stamp.as_mut().unwrap().host = "host-x".into(),
            |n| n.stamp = None,
        ];
        for change in changes {
            let mut changed = note();
            change(&mut changed);
            assert!(!fleet.vouches(&changed, &sealed));
        }
        // Fields are length-prefixed: moving a byte from one field to the next changes the seal.
        let mut shifted = note();
        shifted.plant = "plant-as".into();
        shifted.plugin = "tamp".into();
        assert!(!fleet.vouches(&shifted, &sealed));
        // While the fleet changes keys: sealed with the key, taking the other's seals too.
        let changing = Fleet {
            id: "host-b".into(),
            key: Some(other.clone()),
            also: vec![key.clone()],
        };
        assert!(changing.vouches(&note(), &sealed));
        assert!(changing.vouches(&note(), &note().headers(Some(&other))));
        let third = ControlKey::new(&[9; ControlKey::MIN_BYTES]).unwrap();
        assert!(!changing.vouches(&note(), &note().headers(Some(&third))));
        assert!(!changing.vouches(&note(), &note().headers(None)));
        // Without a key every activation is taken, as before keys.
        let open = Fleet {
            id: "host-b".into(),
            key: None,
            also: Vec::new(),
        };
        assert!(open.vouches(&note(), &note().headers(None)));
        assert_eq!(key.fingerprint(), key.clone().fingerprint());
        assert_ne!(key.fingerprint(), other.fingerprint());
    }

    #[test]
    fn names_with_dots_retain_their_activations_in_queues_of_their_own() {
        assert_ne!(last("a.b", "c"), last("a", "b.c"));
        assert_eq!(
            last("plant-a", "mes.fixed"),
            "millrace.control.last.plant-a/mes.fixed"
        );
        // No host's control queue is a retained queue: host ids have no `/`.
        assert!(!queue("last.plant-a.mes").contains('/'));
    }
}
