//! The host's own short history of each route, for the operator console: every
//! [`INTERVAL`] the sampler reads each route's counters and latency buckets, and keeps the
//! last hour's differences per route in memory — messages taken, chain runs (a replay is a
//! run) and runs that failed at a step, and the 99th percentile of the time to a safe outcome.
//!
//! Memory: [`POINTS`] points of a few words per route; routes removed from the table keep their
//! history until the process ends (bounded by the routes ever configured).

use super::metrics::LATENCY_BUCKETS_NS;
use crate::route::Route;
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

/// Time between samples.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// Points kept per route: an hour.
pub const POINTS: usize = 360;

/// One interval of one route.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Point {
    /// End of the interval, Unix milliseconds.
    pub at_ms: i64,
    pub received: u64,
    /// Chain runs (a replay is a run).
    pub runs: u64,
    /// Chain runs that failed at a step.
    pub failed: u64,
    /// 99th percentile of arrival-to-outcome time in the interval (the upper bound of its
    /// bucket), milliseconds; `None` when nothing finished.
    pub p99_ms: Option<f64>,
}

#[derive(Clone, Copy)]
struct Reading {
    at_ms: i64,
    received: u64,
    runs: u64,
    failed: u64,
    buckets: [u64; LATENCY_BUCKETS_NS.len() + 1],
}

struct Ring {
    last: Reading,
    points: VecDeque<Point>,
}

/// Each route's history, by (plant, route).
#[derive(Default)]
pub struct Series {
    routes: Mutex<BTreeMap<(String, String), Ring>>,
}

/// The process's history.
pub fn series() -> &'static Series {
    static SERIES: LazyLock<Series> = LazyLock::new(Series::default);
    &SERIES
}

fn read(route: &Route, at_ms: i64) -> Reading {
    let m = &route.meters;
    let failed = m.steps.iter().map(|s| s.error.get()).sum::<u64>();
    let runs = m
        .steps
        .first()
        .map_or(m.received.get(), |s| s.received.get());
    Reading {
        at_ms,
        received: m.received.get(),
        runs,
        failed,
        buckets: m.latency.buckets(),
    }
}

fn point(before: &Reading, now: &Reading) -> Point {
    let mut buckets = [0u64; LATENCY_BUCKETS_NS.len() + 1];
    for (i, b) in buckets.iter_mut().enumerate() {
        *b = now.buckets[i].saturating_sub(before.buckets[i]);
    }
    Point {
        at_ms: now.at_ms,
        received: now.received.saturating_sub(before.received),
        runs: now.runs.saturating_sub(before.runs),
        failed: now.failed.saturating_sub(before.failed),
        p99_ms: percentile(&buckets, 0.99),
    }
}

/// The `q` quantile of per-bucket counts, as the upper bound of its bucket in milliseconds (the
/// last bound for the overflow bucket).
pub fn percentile(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = LATENCY_BUCKETS_NS[i.min(LATENCY_BUCKETS_NS.len() - 1)];
            return Some(bound as f64 / 1e6);
        }
    }
    None
}

/// A route's history as the console reads it.
#[derive(Debug, Clone, Serialize)]
pub struct RouteHistory {
    pub plant: String,
    pub route: String,
    /// Totals since the host started.
    pub received: u64,
    pub runs: u64,
    pub failed: u64,
    /// The sampled intervals, oldest first, then the interval running now.
    pub points: Vec<Point>,
}

impl Series {
    /// Sample `routes` now.
    pub fn sample(&self, routes: &[Arc<Route>]) {
        let at_ms = crate::lineage::now_ms();
        let mut all = self.routes.lock().expect("series lock");
        for route in routes {
            let now = read(route, at_ms);
            let key = (route.plant.clone(), route.name.clone());
            match all.get_mut(&key) {
                None => {
                    all.insert(
                        key,
                        Ring {
                            last: now,
                            points: VecDeque::new(),
                        },
                    );
                }
                Some(ring) => {
                    if ring.points.len() == POINTS {
                        ring.points.pop_front();
                    }
                    ring.points.push_back(point(&ring.last, &now));
                    ring.last = now;
                }
            }
        }
    }

    /// The history of `route`, with the interval running now read live.
    pub fn history(&self, route: &Route) -> RouteHistory {
        let now = read(route, crate::lineage::now_ms());
        let all = self.routes.lock().expect("series lock");
        let mut points: Vec<Point> = Vec::new();
        if let Some(ring) = all.get(&(route.plant.clone(), route.name.clone())) {
            points.extend(ring.points.iter().copied());
            points.push(point(&ring.last, &now));
        }
        RouteHistory {
            plant: route.plant.clone(),
            route: route.name.clone(),
            received: now.received,
            runs: now.runs,
            failed: now.failed,
            points,
        }
    }
}

/// Sample `routes` every [`INTERVAL`] until `stopped`.
pub async fn run(
    routes: Arc<crate::route::Routes>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = tick.tick() => series().sample(&routes.all()),
            _ = stopped.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_99th_percentile_is_the_bound_of_its_bucket() {
        let mut buckets = [0u64; LATENCY_BUCKETS_NS.len() + 1];
        assert_eq!(percentile(&buckets, 0.99), None);
        buckets[0] = 98; // ≤ 10 µs
        buckets[6] = 2; // ≤ 1 ms
        assert_eq!(percentile(&buckets, 0.99), Some(1.0));
        assert_eq!(percentile(&buckets, 0.5), Some(0.01));
        buckets[LATENCY_BUCKETS_NS.len()] = 100; // past 30 s
        assert_eq!(percentile(&buckets, 0.99), Some(30_000.0));
    }
}
