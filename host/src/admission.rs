//! Admission: which message may be mediated now. The host has `host.max_in_flight` mediation
//! threads; each plant may hold at most its share of them (`plants.P.max_in_flight`, by
//! default half when several plants are configured) and a route at most its own
//! (`routes.R.max_in_flight`). So a plant whose plugin loops, or whose clients flood it, waits
//! on its own slots while the other plants keep theirs.
//!
//! Sources that can hold back (a broker consumer: its prefetch bounds what it holds) wait for a
//! slot. Sources that must answer (HTTP) wait while fewer than `plants.P.max_waiting` of the
//! plant's messages wait; beyond that they are refused at once ([`Busy`]) and answer 503 for
//! that plant only.

use crate::config::Config;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One plant's (or route's) slots and its waiting messages.
struct Share {
    slots: Arc<Semaphore>,
    in_flight: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Share {
    fn new(in_flight: usize, max_waiting: usize) -> Arc<Share> {
        Arc::new(Share {
            slots: Arc::new(Semaphore::new(in_flight)),
            in_flight,
            waiting: AtomicUsize::new(0),
            max_waiting,
        })
    }
}

/// The slots of the host, its plants and its routes.
pub struct Admission {
    host: Arc<Semaphore>,
    plants: RwLock<HashMap<String, Arc<Share>>>,
    routes: RwLock<HashMap<String, Arc<Share>>>,
}

/// A message's right to be mediated; the slots return when it is dropped.
pub struct Admitted {
    _route: Option<OwnedSemaphorePermit>,
    _plant: OwnedSemaphorePermit,
    _host: OwnedSemaphorePermit,
}

/// The plant has as many messages waiting as it may: refused now, try again later.
#[derive(Debug, thiserror::Error)]
#[error(
    "plant {plant} is busy: its {in_flight} slot(s) are taken and {waiting} message(s) wait (plants.{plant}.max_in_flight, max_waiting)"
)]
pub struct Busy {
    pub plant: String,
    pub in_flight: usize,
    pub waiting: usize,
}

/// Counts a waiting message until dropped (also when the waiter is cancelled).
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Admission {
    pub fn new(config: &Config) -> Admission {
        let admission = Admission {
            host: Arc::new(Semaphore::new(config.max_in_flight)),
            plants: RwLock::default(),
            routes: RwLock::default(),
        };
        admission.configure(config);
        admission
    }

    /// Take the plants' and routes' shares from `config` (at start, and on a reload). A share
    /// whose limits did not change is kept as it is; a changed one is replaced (messages in
    /// flight on the old one finish there).
    pub fn configure(&self, config: &Config) {
        let mut plants = self.plants.write().expect("admission lock");
        let mut kept = HashMap::new();
        for (plant, limits) in &config.plant_limits {
            let share = match plants.remove(plant) {
                Some(share)
                    if share.in_flight == limits.max_in_flight
                        && share.max_waiting == limits.max_waiting =>
                {
                    share
                }
                _ => Share::new(limits.max_in_flight, limits.max_waiting),
            };
            kept.insert(plant.clone(), share);
        }
        *plants = kept;
        let mut routes = self.routes.write().expect("admission lock");
        let mut kept = HashMap::new();
        for route in &config.routes {
            let Some(in_flight) = route.max_in_flight else {
                continue;
            };
            let share = match routes.remove(&route.name) {
                Some(share) if share.in_flight == in_flight => share,
                _ => Share::new(in_flight, usize::MAX),
            };
            kept.insert(route.name.clone(), share);
        }
        *routes = kept;
    }

    fn shares(&self, plant: &str, route: &str) -> (Arc<Share>, Option<Arc<Share>>) {
        let plant_share = self
            .plants
            .read()
            .expect("admission lock")
            .get(plant)
            .cloned()
            // A plant the configuration does not name has no routes; never reached.
            .unwrap_or_else(|| Share::new(1, 0));
        let route_share = self
            .routes
            .read()
            .expect("admission lock")
            .get(route)
            .cloned();
        (plant_share, route_share)
    }

    /// Wait for a slot of `route`, its plant and the host (a source that can hold back).
    pub async fn wait(&self, plant: &str, route: &str) -> Admitted {
        let (plant_share, route_share) = self.shares(plant, route);
        self.acquire(&plant_share, route_share.as_deref()).await
    }

    /// A slot now or after a wait among at most `max_waiting` of the plant's messages; else
    /// [`Busy`] at once (a source that must answer).
    pub async fn enter(&self, plant: &str, route: &str) -> Result<Admitted, Busy> {
        let (plant_share, route_share) = self.shares(plant, route);
        let queued = plant_share.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&plant_share.waiting);
        if queued >= plant_share.max_waiting && plant_share.slots.available_permits() == 0 {
            return Err(Busy {
                plant: plant.to_string(),
                in_flight: plant_share.in_flight,
                waiting: queued,
            });
        }
        Ok(self.acquire(&plant_share, route_share.as_deref()).await)
    }

    async fn acquire(&self, plant: &Share, route: Option<&Share>) -> Admitted {
        // The semaphores are never closed.
        let route = match route {
            Some(share) => Some(
                Arc::clone(&share.slots)
                    .acquire_owned()
                    .await
                    .expect("route slots are never closed"),
            ),
            None => None,
        };
        let plant = Arc::clone(&plant.slots)
            .acquire_owned()
            .await
            .expect("plant slots are never closed");
        let host = Arc::clone(&self.host)
            .acquire_owned()
            .await
            .expect("host slots are never closed");
        Admitted {
            _route: route,
            _plant: plant,
            _host: host,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("t.toml"), text).unwrap()
    }

    const TWO_PLANTS: &str = r#"
[host]
max_in_flight = 4
[plants.a]
max_waiting = 1
[plants.b]
[routes.ra]
plant = "a"
source = "http"
sink = "reply"
[[routes.ra.steps]]
plugin = "x.wasm"
[routes.rb]
plant = "b"
source = "http"
sink = "reply"
[[routes.rb.steps]]
plugin = "x.wasm"
"#;

    #[tokio::test]
    async fn a_saturated_plant_is_refused_while_another_plant_gets_its_share() {
        let admission = Admission::new(&config(TWO_PLANTS));
        // Plant a's share is half of 4: two in flight.
        let a1 = admission.enter("a", "ra").await.unwrap();
        let _a2 = admission.enter("a", "ra").await.unwrap();
        // One may wait; with one waiting, the next is refused.
        let waiter = {
            let admission = Arc::new(admission);
            let waiting = Arc::clone(&admission);
            let task = tokio::spawn(async move { waiting.enter("a", "ra").await.is_ok() });
            while admission.plants.read().unwrap()["a"]
                .waiting
                .load(Ordering::SeqCst)
                == 0
            {
                tokio::task::yield_now().await;
            }
            let busy = admission.enter("a", "ra").await.err().expect("busy");
            assert_eq!(busy.plant, "a");
            // Plant b still gets both of its slots.
            let _b1 = admission.enter("b", "rb").await.unwrap();
            let _b2 = admission.enter("b", "rb").await.unwrap();
            drop(a1);
            task
        };
        assert!(waiter.await.unwrap(), "the waiting one got the freed slot");
    }
}
