//! The threads chains run on, and when a short chain runs on the task that took its message
//! instead.
//!
//! A plugin call blocks its thread (it is bounded by the step's deadline, not cooperative), so
//! a chain runs on a mediation thread by default. Handing each message to a mediation thread and
//! its answer back costs two thread switches and wake-ups, which for a chain of a few tens of
//! microseconds is most of the host's CPU per message. So a route whose chain has shown itself
//! short ([`Inline`]) runs on the async worker that took the message, while at least one async
//! worker is left free for everything else (other connections, the admin API, timers).

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// The longest run that counts as short, in CPU time of the thread that ran it: a chain that runs
/// longer on a worker holds it from its other tasks for that long. (Time the thread spent
/// preempted by other threads is not the chain's; when the CPU clock was not read, see
/// [`TIMED_RUNS`]. A chain that could block, waiting in a host call, never runs inline: see
/// [`Inline::new`].)
pub const SHORT_RUN: Duration = Duration::from_micros(500);
/// Short runs in a row on the mediation threads before a route's chain may run inline.
pub const SHORT_RUNS_TO_INLINE: u32 = 16;
/// Runs over [`SHORT_RUN`], each after the chain had earned inline runs, after which it is
/// taken off inline runs for a while: [`SHORT_RUNS_OFF`] short runs on the mediation threads the
/// first time, twice as many each time after (until the route is rebuilt: an activation or
/// reload makes a new record, which starts over).
pub const LONG_RUNS_TO_STAY_OFF: u32 = 3;
/// Short runs after which one long run is forgiven: a rare long run (the machine's hiccups, a
/// rare large message) does not take a chain off; a chain that runs long more often than this
/// does.
pub const SHORT_RUNS_TO_FORGIVE: u32 = 1_000;
/// Short runs on the mediation threads a chain taken off inline runs for the first time makes
/// there before it runs inline again (the last 16 of them in a row, as when it first earned
/// them); each later time doubles it, up to 2^10 times this. A chain that keeps running long
/// thus spends ever longer off; one that was taken off by a burst of the machine's hiccups
/// comes back.
pub const SHORT_RUNS_OFF: u32 = 1_000;
/// How long a stretch of runs that read the CPU clock at their start lasts: this many runs within
/// [`SHORT_RUN`] of wall time (runs that made an instance are not counted, runs while the chain
/// is taken off inline runs neither). A stretch starts with a route version and again at every
/// run over [`SHORT_RUN`] of wall time. Reading a thread's CPU clock is a system call, and a run
/// within [`SHORT_RUN`] of wall time needs none: it is short whatever it was preempted for. So
/// outside a stretch a run reads only the wall clock. A run over [`SHORT_RUN`] of wall time
/// that did not read the CPU clock at its start sends the chain back to the mediation threads,
/// as a long run does, but is not counted toward taking it off (it may only have been
/// preempted). So of a chain's long runs at most one per this many short runs goes uncounted
/// (taking it off can cost one long inline run more than if every run were timed); a chain
/// coming back after being taken off is timed.
pub const TIMED_RUNS: u32 = SHORT_RUNS_TO_FORGIVE;
/// The most doublings of [`SHORT_RUNS_OFF`].
const MAX_OFF_DOUBLINGS: u32 = 10;
const _: () = assert!(SHORT_RUNS_OFF <= u32::MAX >> MAX_OFF_DOUBLINGS);

/// The threads that run chains. A fixed set of threads takes jobs from one queue in arrival
/// order: a busy thread goes on to the next job without being woken, which under load saves
/// most of the thread switches a fresh hand-off per message would cost.
pub struct Workers {
    jobs: flume::Sender<Box<dyn FnOnce() + Send>>,
    /// Chains running inline now, across the host.
    inline_now: AtomicUsize,
}

/// The job's thread died (its job panicked); the message was not mediated.
#[derive(Debug, thiserror::Error)]
#[error("the mediation thread failed while running the chain")]
pub struct WorkerLost;

/// What one route's chain has shown of its run times, deciding whether it runs inline. One per
/// route version: a new version starts on the mediation threads and earns its way.
#[derive(Debug)]
pub struct Inline {
    /// Short runs in a row.
    short: AtomicU32,
    /// Long runs not forgiven yet.
    long: AtomicU32,
    /// Short runs since a long one was last forgiven.
    since_forgiven: AtomicU32,
    /// Short runs still needed before the chain may earn inline runs again (0: none).
    off_for: AtomicU32,
    /// Times the chain was taken off inline runs.
    times_off: AtomicU32,
    /// Runs still to read the CPU clock at their start ([`TIMED_RUNS`]).
    timed: AtomicU32,
    /// Set for a chain that may block: it never runs inline.
    never: bool,
    /// The route's plant and name, for the log line when it is taken off.
    plant: String,
    route: String,
}

impl Inline {
    /// The record of a chain that may earn inline runs when `may` (no step may block its
    /// thread: [`crate::plugin::StepRuntime::may_block`]), and never otherwise; of route
    /// `route` of `plant`.
    pub fn new(may: bool, plant: &str, route: &str) -> Inline {
        Inline {
            short: AtomicU32::new(0),
            long: AtomicU32::new(0),
            since_forgiven: AtomicU32::new(0),
            off_for: AtomicU32::new(0),
            times_off: AtomicU32::new(0),
            timed: AtomicU32::new(TIMED_RUNS),
            never: !may,
            plant: plant.to_string(),
            route: route.to_string(),
        }
    }

    /// Whether the chain has earned running inline.
    pub fn earned(&self) -> bool {
        !self.never
            && self.off_for.load(Ordering::Relaxed) == 0
            && self.short.load(Ordering::Relaxed) >= SHORT_RUNS_TO_INLINE
    }

    /// Whether a run starting now reads the CPU clock at its start ([`TIMED_RUNS`]).
    fn timing(&self) -> bool {
        self.timed.load(Ordering::Relaxed) > 0
    }

    /// Note a run timed from `started` (a run that made an instance is not noted);
    /// says so in the log when it takes the chain off inline runs.
    fn note(&self, started: RunClock) {
        if let Some(took) = started.took() {
            self.noted(took);
        }
    }

    /// [`Inline::note`] of a run that took `took`.
    fn noted(&self, took: Took) {
        let cpu = match took {
            Took::Short(wall) => {
                // The stretch lasts while the chain is off, so its first runs back are timed.
                if self.off_for.load(Ordering::Relaxed) == 0 {
                    let _ = self
                        .timed
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                }
                wall
            }
            Took::Cpu(cpu) => {
                self.timed.store(TIMED_RUNS, Ordering::Relaxed);
                cpu
            }
            Took::Untimed => {
                // Back to the mediation threads until it earns inline runs again, uncounted.
                self.timed.store(TIMED_RUNS, Ordering::Relaxed);
                self.short.store(0, Ordering::Relaxed);
                return;
            }
        };
        if let Some(off_for) = self.ran(cpu) {
            tracing::info!(plant = %self.plant, route = %self.route, cpu_us = cpu.as_micros() as u64, short_runs_off = off_for, "this version of the route's chain ran long; it runs on the mediation threads until it has run short that many times");
        }
    }

    /// Note a run that took `took` (see [`SHORT_RUN`]); when this run took the chain off
    /// inline runs, for how many short runs.
    fn ran(&self, took: Duration) -> Option<u32> {
        if took <= SHORT_RUN {
            // A short run while off counts toward coming back, not toward forgiveness.
            let was_off = self
                .off_for
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            if !was_off
                && self.since_forgiven.fetch_add(1, Ordering::Relaxed) + 1 >= SHORT_RUNS_TO_FORGIVE
            {
                self.since_forgiven.store(0, Ordering::Relaxed);
                let _ = self
                    .long
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            }
            let _ = self
                .short
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < SHORT_RUNS_TO_INLINE).then_some(n + 1)
                });
            return None;
        }
        // Long runs before the chain earned inline runs (a cold start: first instances, first
        // touches of memory) held no async worker and do not count against it.
        let earned = self.short.swap(0, Ordering::Relaxed) >= SHORT_RUNS_TO_INLINE
            && self.off_for.load(Ordering::Relaxed) == 0;
        if !earned {
            return None;
        }
        // The run that makes the count reach LONG_RUNS_TO_STAY_OFF (and only that one) takes the
        // chain off and starts the count again.
        let before = self
            .long
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(if n + 1 >= LONG_RUNS_TO_STAY_OFF {
                    0
                } else {
                    n + 1
                })
            })
            .unwrap_or_default();
        if before + 1 < LONG_RUNS_TO_STAY_OFF {
            return None;
        }
        // Forgiveness starts again too: the short runs off do not buy a long run on return.
        self.since_forgiven.store(0, Ordering::Relaxed);
        let times = self.times_off.fetch_add(1, Ordering::Relaxed);
        let off_for = SHORT_RUNS_OFF << times.min(MAX_OFF_DOUBLINGS);
        self.off_for.store(off_for, Ordering::Relaxed);
        Some(off_for)
    }
}

impl Workers {
    /// Start `threads` threads (at least one).
    pub fn new(threads: usize) -> Workers {
        let (jobs, queue) = flume::unbounded::<Box<dyn FnOnce() + Send>>();
        for i in 0..threads.max(1) {
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(format!("millrace-chain-{i}"))
                .spawn(move || {
                    while let Ok(job) = queue.recv() {
                        // A panicking job loses its answer (the caller hears `WorkerLost`),
                        // not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .expect("a mediation thread starts");
        }
        Workers {
            jobs,
            inline_now: AtomicUsize::new(0),
        }
    }

    /// Run `job` on a mediation thread; its result.
    pub async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerLost> {
        let (answer, answered) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = answer.send(job());
            }))
            .map_err(|_| WorkerLost)?;
        answered.await.map_err(|_| WorkerLost)
    }

    /// Run a chain of a route whose run times `record` keeps: here, on the calling async
    /// worker, when the record has earned it and another worker stays free (counted in
    /// `inline`); otherwise on a mediation thread. Either way the run's time is noted in
    /// `record`.
    pub async fn run_chain<T: Send + 'static>(
        &self,
        record: &std::sync::Arc<Inline>,
        inline: &crate::telemetry::metrics::Counter,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, WorkerLost> {
        if let Some(_running) = self.inline_slot(record) {
            inline.inc();
            let started = RunClock::start(record);
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            record.note(started);
            return ran.map_err(|_| WorkerLost);
        }
        let record = std::sync::Arc::clone(record);
        self.run(move || {
            let started = RunClock::start(&record);
            let answer = job();
            record.note(started);
            answer
        })
        .await
    }

    /// A place for one inline run now, if `record` earned it and the runtime has a worker
    /// to spare.
    fn inline_slot(&self, record: &Inline) -> Option<InlineRun<'_>> {
        if !record.earned() {
            return None;
        }
        // One worker is always left to the runtime's other tasks (a single-threaded runtime
        // has none to spare).
        let handle = tokio::runtime::Handle::try_current().ok()?;
        let spare = handle.metrics().num_workers().saturating_sub(1);
        self.inline_now
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < spare).then_some(n + 1)
            })
            .ok()?;
        Some(InlineRun(&self.inline_now))
    }
}

/// What a run cost the thread it ran on: the thread's CPU time, so that time the thread spent
/// preempted by others is not counted against the chain. A run that made a plugin instance (a
/// step's first, one replacing an instance that served its share or trapped, one more for a
/// busier route) is not timed: that cost is the host's, once per instance, not the chain's. (An
/// instance that served its share is dropped on the reaper thread, not in the run.)
///
/// Reading a thread's CPU clock is a system call; the wall clock is not. A thread's CPU time
/// never exceeds the wall time that passed, so a run whose wall time is within [`SHORT_RUN`]
/// is short without reading the CPU clock; the CPU clock is read at a run's start only while
/// the route's record asks for it ([`TIMED_RUNS`]), and at its end only when it was read at
/// the start and the wall time is longer.
struct RunClock {
    cpu: Option<Duration>,
    wall: std::time::Instant,
    made: u64,
}

/// What a run took, as far as [`RunClock`] could tell.
#[derive(Debug, Clone, Copy)]
enum Took {
    /// Its wall time, within [`SHORT_RUN`].
    Short(Duration),
    /// Its CPU time; its wall time was longer than [`SHORT_RUN`].
    Cpu(Duration),
    /// Longer than [`SHORT_RUN`] of wall time; its CPU time is unknown.
    Untimed,
}

impl RunClock {
    fn start(record: &Inline) -> RunClock {
        // The wall clock first, so that the wall interval encloses the CPU one.
        let wall = std::time::Instant::now();
        RunClock {
            cpu: record.timing().then(thread_cpu),
            wall,
            made: crate::plugin::instances_made_here(),
        }
    }

    /// What the run took; `None` when it made an instance.
    fn took(&self) -> Option<Took> {
        if crate::plugin::instances_made_here() != self.made {
            return None;
        }
        let wall = self.wall.elapsed();
        if wall <= SHORT_RUN {
            return Some(Took::Short(wall));
        }
        Some(match self.cpu {
            Some(cpu) => Took::Cpu(thread_cpu().saturating_sub(cpu)),
            None => Took::Untimed,
        })
    }
}

/// This thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One inline run in progress (counted in `Workers::inline_now` until dropped).
struct InlineRun<'a>(&'a AtomicUsize);

impl Drop for InlineRun<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_micros(250);
    const LONG: Duration = Duration::from_micros(1000);

    fn short_runs(record: &Inline, n: u32) {
        for _ in 0..n {
            assert_eq!(record.ran(SHORT), None);
        }
    }

    #[test]
    fn a_rare_long_run_is_forgiven() {
        let record = Inline::new(true, "plant-a", "r");
        for _ in 0..LONG_RUNS_TO_STAY_OFF * 3 {
            short_runs(&record, SHORT_RUNS_TO_FORGIVE);
            assert!(record.earned());
            assert_eq!(record.ran(LONG), None);
        }
        short_runs(&record, SHORT_RUNS_TO_INLINE);
        assert!(record.earned());
    }

    #[test]
    fn the_cpu_clock_is_read_in_a_stretch_after_a_run_long_in_wall_time_and_an_untimed_one_is_not_counted()
     {
        let record = Inline::new(true, "plant-a", "r");
        let noted_short = |n: u32| {
            for _ in 0..n {
                record.noted(Took::Short(SHORT));
            }
        };
        // A new version's first TIMED_RUNS runs read it.
        assert!(record.timing());
        noted_short(TIMED_RUNS - 1);
        assert!(record.timing(), "one timed run left");
        noted_short(1);
        assert!(!record.timing(), "the stretch is over");
        assert!(record.earned());
        // A run long in wall time whose CPU time is unknown (it may only have been preempted)
        // sends the chain back to the mediation threads and starts a stretch.
        record.noted(Took::Untimed);
        assert!(!record.earned(), "back on the mediation threads");
        assert!(record.timing());
        noted_short(SHORT_RUNS_TO_INLINE);
        assert!(record.earned());
        // A timed long run counts, and starts the stretch again in full.
        record.noted(Took::Cpu(LONG));
        assert!(!record.earned());
        noted_short(TIMED_RUNS - 1);
        assert!(record.timing(), "the long run started a whole stretch");
        noted_short(1);
        assert!(!record.timing());
        // Preempted but short in CPU time: a short run.
        record.noted(Took::Cpu(SHORT));
        assert!(record.earned());
        // Untimed runs are never counted toward taking the chain off, however many.
        for _ in 0..LONG_RUNS_TO_STAY_OFF * 4 {
            record.noted(Took::Untimed);
            assert!(!record.earned());
            noted_short(SHORT_RUNS_TO_INLINE);
            assert!(record.earned(), "earned back, not taken off");
        }
        // Timed long runs are: LONG_RUNS_TO_STAY_OFF of them, each after earning (the one
        // above was forgiven by the TIMED_RUNS short runs after it), take it off.
        for n in 1..=LONG_RUNS_TO_STAY_OFF {
            assert!(record.earned());
            record.noted(Took::Cpu(LONG));
            if n < LONG_RUNS_TO_STAY_OFF {
                noted_short(SHORT_RUNS_TO_INLINE);
            }
        }
        noted_short(SHORT_RUNS_OFF - 1);
        assert!(!record.earned(), "off");
        // Its short runs while off do not end the stretch: its first runs back are timed.
        noted_short(1);
        assert!(record.earned(), "back");
        assert!(record.timing(), "and timed");
    }

    #[test]
    fn a_run_long_in_wall_time_is_untimed_unless_its_start_read_the_cpu_clock() {
        let made = crate::plugin::instances_made_here();
        let long_ago = std::time::Instant::now() - LONG;
        let untimed = RunClock {
            cpu: None,
            wall: long_ago,
            made,
        };
        assert!(matches!(untimed.took(), Some(Took::Untimed)));
        let timed = RunClock {
            cpu: Some(thread_cpu()),
            wall: long_ago,
            made,
        };
        assert!(matches!(timed.took(), Some(Took::Cpu(cpu)) if cpu < SHORT_RUN));
        // A run's start reads the CPU clock only while its route's record asks for it.
        let record = Inline::new(true, "plant-a", "r");
        assert!(RunClock::start(&record).cpu.is_some());
        for _ in 0..TIMED_RUNS {
            record.noted(Took::Short(SHORT));
        }
        assert!(RunClock::start(&record).cpu.is_none());
    }

    #[test]
    fn a_chain_that_may_block_never_earns_inline_runs() {
        let record = Inline::new(false, "plant-a", "r");
        short_runs(&record, SHORT_RUNS_TO_INLINE * 4);
        assert!(!record.earned());
    }

    #[test]
    fn a_chain_earns_inline_runs_by_short_runs_in_a_row_and_loses_them_after_long_ones() {
        let record = Inline::new(true, "plant-a", "r");
        // Long runs before it earned anything (a cold start) do not count against it.
        for _ in 0..LONG_RUNS_TO_STAY_OFF * 2 {
            assert_eq!(record.ran(LONG), None);
        }
        short_runs(&record, SHORT_RUNS_TO_INLINE - 1);
        assert!(!record.earned());
        short_runs(&record, 1);
        assert!(record.earned());
        // A long run starts the count again, and counts against it.
        assert_eq!(record.ran(LONG), None);
        assert!(!record.earned());
        // A long run right after it does not count: the chain was on the mediation threads.
        assert_eq!(record.ran(LONG), None);
        for n in 2..=LONG_RUNS_TO_STAY_OFF {
            short_runs(&record, SHORT_RUNS_TO_INLINE);
            assert!(record.earned());
            let off = record.ran(LONG);
            assert_eq!(off, (n == LONG_RUNS_TO_STAY_OFF).then_some(SHORT_RUNS_OFF));
        }
        short_runs(&record, SHORT_RUNS_OFF - 1);
        assert!(
            !record.earned(),
            "off until it ran short SHORT_RUNS_OFF times"
        );
        short_runs(&record, 1);
        assert!(record.earned(), "back");
    }

    #[test]
    fn each_time_a_chain_is_taken_off_it_stays_off_twice_as_long_up_to_a_bound() {
        let record = Inline::new(true, "plant-a", "r");
        short_runs(&record, SHORT_RUNS_TO_INLINE);
        for time in 0..MAX_OFF_DOUBLINGS + 2 {
            let expected = SHORT_RUNS_OFF << time.min(MAX_OFF_DOUBLINGS);
            for n in 1..=LONG_RUNS_TO_STAY_OFF {
                assert!(record.earned());
                let off = record.ran(LONG);
                assert_eq!(off, (n == LONG_RUNS_TO_STAY_OFF).then_some(expected));
                if n < LONG_RUNS_TO_STAY_OFF {
                    short_runs(&record, SHORT_RUNS_TO_INLINE);
                }
            }
            short_runs(&record, expected - 1);
            assert!(!record.earned(), "time {time}: still off");
            // Long runs while off do not count, and do not shorten the time off.
            assert_eq!(record.ran(LONG), None);
            short_runs(&record, SHORT_RUNS_TO_INLINE);
            assert!(record.earned(), "time {time}: back");
        }
    }
}
