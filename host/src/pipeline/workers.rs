//! The threads chains run on: a plugin call blocks its thread, so chains never run on the async
//! workers.

/// The threads that run chains. A plugin call blocks its thread (it is bounded by the step's
/// deadline, not cooperative), so chains run here rather than on the async workers. A fixed set
/// of threads takes jobs from one queue in arrival order: a busy thread goes on to the next job
/// without being woken, which under load saves most of the thread switches a fresh hand-off per
/// message would cost.
pub struct Workers {
    jobs: flume::Sender<Box<dyn FnOnce() + Send>>,
}

/// The job's thread died (its job panicked); the message was not mediated.
#[derive(Debug, thiserror::Error)]
#[error("the mediation thread failed while running the chain")]
pub struct WorkerLost;

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
        Workers { jobs }
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
}
