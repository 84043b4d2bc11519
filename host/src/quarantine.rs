//! The circuit breaker: a plugin version that traps or breaks its limits (deadline, memory cap,
//! output bounds) `limits.quarantine_after` times within `limits.quarantine_window_s` on a
//! plant is quarantined there. While quarantined, its steps do not run: messages are answered
//! as transient failures (HTTP 503 `plugin-quarantined` with Retry-After, AMQP parked for a
//! retry) — held, not lost. With `limits.quarantine_action = "rollback"` the host also rolls the
//! plant back to the version that was active before, while the quarantined version still runs
//! (a new version starts with a closed breaker). An operator lists quarantines and lifts one on the admin API.
//!
//! Rejections and retry-later answers are the plugin doing its job, not failures here.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What happens when a breaker trips, besides holding the version's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Hold its messages until an operator lifts the quarantine (or activates a version).
    Pause,
    /// Also roll the plant back to the version active before (while the quarantined one runs).
    Rollback,
}

/// When a breaker trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Failures within `window` that trip it; 0: never.
    pub after: usize,
    pub window: Duration,
    pub action: Action,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            after: 5,
            window: Duration::from_secs(60),
            action: Action::Pause,
        }
    }
}

/// A version of a plugin on a plant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Subject {
    pub plant: String,
    pub plugin: String,
    pub version: String,
    pub digest: String,
}

/// A tripped breaker, as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Quarantined {
    #[serde(flatten)]
    pub subject: Subject,
    /// RFC 3339.
    pub since: String,
    pub failures: usize,
    pub last_reason: String,
}

#[derive(Default)]
struct Breaker {
    recent: VecDeque<Instant>,
    tripped: Option<Quarantined>,
}

/// The breakers of every plant's plugin versions.
pub struct Quarantines {
    policy: Policy,
    breakers: Mutex<HashMap<Subject, Breaker>>,
    /// Told of every trip (the host rolls back when the policy says so).
    tripped: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Subject>>>,
}

impl Quarantines {
    pub fn new(policy: Policy) -> Quarantines {
        Quarantines {
            policy,
            breakers: Mutex::default(),
            tripped: Mutex::default(),
        }
    }

    /// Breakers that never trip (`plugin test`, conformance vectors, benchmarks).
    pub fn disabled() -> Quarantines {
        Quarantines::new(Policy {
            after: 0,
            ..Policy::default()
        })
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Be told of every trip from now on.
    pub fn subscribe(&self) -> tokio::sync::mpsc::UnboundedReceiver<Subject> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.tripped.lock().expect("quarantine lock") = Some(tx);
        rx
    }

    /// Why `subject` may not run now, if it is quarantined.
    pub fn check(&self, subject: &Subject) -> Option<String> {
        let breakers = self.breakers.lock().expect("quarantine lock");
        breakers
            .get(subject)
            .and_then(|b| b.tripped.as_ref())
            .map(|q| {
                format!(
                    "plugin {}@{} is quarantined on plant {} since {} after {} failures (last: {}); an operator lifts it on the admin API",
                    q.subject.plugin,
                    q.subject.version,
                    q.subject.plant,
                    q.since,
                    q.failures,
                    q.last_reason
                )
            })
    }

    /// `subject` failed (trapped, or broke a limit) with `reason`. Trips its breaker when the
    /// failures within the window reach the policy's count; then `true`.
    pub fn failed(&self, subject: &Subject, reason: &str) -> bool {
        if self.policy.after == 0 {
            return false;
        }
        let now = Instant::now();
        let mut breakers = self.breakers.lock().expect("quarantine lock");
        let breaker = breakers.entry(subject.clone()).or_default();
        if breaker.tripped.is_some() {
            return false;
        }
        breaker.recent.push_back(now);
        while breaker
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.policy.window)
        {
            breaker.recent.pop_front();
        }
        if breaker.recent.len() < self.policy.after {
            return false;
        }
        let quarantined = Quarantined {
            subject: subject.clone(),
            since: crate::durable::now_rfc3339(),
            failures: breaker.recent.len(),
            last_reason: crate::plugin::bounds::truncate(reason, 512),
        };
        tracing::error!(plant = %subject.plant, plugin = %subject.plugin, version = %subject.version, failures = quarantined.failures, "plugin version quarantined: {reason}");
        breaker.tripped = Some(quarantined);
        breaker.recent.clear();
        if let Some(tx) = self.tripped.lock().expect("quarantine lock").as_ref() {
            let _ = tx.send(subject.clone());
        }
        true
    }

    /// Every quarantined version, by plant and plugin.
    pub fn list(&self) -> Vec<Quarantined> {
        let mut all: Vec<Quarantined> = self
            .breakers
            .lock()
            .expect("quarantine lock")
            .values()
            .filter_map(|b| b.tripped.clone())
            .collect();
        all.sort_by(|a, b| {
            (&a.subject.plant, &a.subject.plugin).cmp(&(&b.subject.plant, &b.subject.plugin))
        });
        all
    }

    /// Lift every quarantine of `plugin` on `plant`; what was lifted.
    pub fn reset(&self, plant: &str, plugin: &str) -> Vec<Subject> {
        let mut lifted = Vec::new();
        for (subject, breaker) in self.breakers.lock().expect("quarantine lock").iter_mut() {
            if subject.plant == plant && subject.plugin == plugin {
                breaker.recent.clear();
                if breaker.tripped.take().is_some() {
                    lifted.push(subject.clone());
                }
            }
        }
        lifted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            plant: "p".into(),
            plugin: "x".into(),
            version: "1.0.0".into(),
            digest: "sha256:aa".into(),
        }
    }

    #[test]
    fn the_breaker_trips_on_the_nth_failure_in_the_window_and_an_operator_lifts_it() {
        let q = Quarantines::new(Policy {
            after: 3,
            window: Duration::from_secs(60),
            action: Action::Pause,
        });
        let mut told = q.subscribe();
        assert!(!q.failed(&subject(), "trap 1"));
        assert!(!q.failed(&subject(), "trap 2"));
        assert!(q.check(&subject()).is_none());
        assert!(q.failed(&subject(), "trap 3"));
        assert!(
            q.check(&subject())
                .unwrap()
                .contains("after 3 failures (last: trap 3)")
        );
        assert_eq!(told.try_recv().unwrap(), subject());
        // Another version of the same plugin is not affected.
        let other = Subject {
            version: "2.0.0".into(),
            digest: "sha256:bb".into(),
            ..subject()
        };
        assert!(q.check(&other).is_none());
        assert_eq!(q.list().len(), 1);
        assert_eq!(q.reset("p", "x"), vec![subject()]);
        assert!(q.check(&subject()).is_none());
        assert!(q.list().is_empty());
    }

    #[test]
    fn failures_outside_the_window_do_not_count_and_zero_never_trips() {
        let q = Quarantines::new(Policy {
            after: 2,
            window: Duration::from_millis(1),
            action: Action::Pause,
        });
        assert!(!q.failed(&subject(), "a"));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!q.failed(&subject(), "b"), "the first one left the window");
        let never = Quarantines::disabled();
        for _ in 0..100 {
            assert!(!never.failed(&subject(), "x"));
        }
    }
}
