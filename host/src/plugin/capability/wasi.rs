//! Capability `wasi`: WASI 0.2 for guests whose language runtime needs it (C with wasi-libc,
//! Python, JavaScript), with no ambient authority.
//!
//! What a guest gets: no preopened directories (no files), no sockets (TCP, UDP and name lookup
//! switched off), an empty environment, no arguments, a closed stdin, the host's clocks and a
//! random source. stdout and stderr are collected per call and written to the host log with the
//! plant, route, plugin and message id (stderr at warn level; its last line explains a trap).
//!
//! A clock subscription (`wasi:clocks/monotonic-clock` `subscribe-duration` and
//! `subscribe-instant`) wakes no later than the current call's deadline: a guest blocked in
//! `pollable.block` runs no guest code, so the epoch deadline alone would not stop it. Woken at
//! the deadline, the guest's next epoch check finds the deadline past and traps; should the
//! guest answer first (the epoch ticker late on a loaded machine), the answer is taken as that
//! interrupt ([`past_deadline`]).

use crate::plugin::store::{Invocation, StepContext};
use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use wasmtime::component::{Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{DynPollable, OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The monotonic clock interface whose subscriptions are bounded (the version
/// `wasmtime_wasi::p2::add_to_linker_sync` defines; guests importing an earlier 0.2 match it).
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// How long past the call's deadline a clock subscription may still wake: a tick of the epoch
/// ticker and some, so the guest's next epoch check usually finds the deadline past. A call
/// whose wait was woken this way fails at the deadline even if the ticker has not ticked yet
/// ([`Wasi::woken_by_deadline`]).
const WAKE_AFTER_DEADLINE: std::time::Duration = std::time::Duration::from_millis(2);

/// Bytes kept per stream and call; beyond this, output is dropped and the log says so.
const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// The WASI state of one instance.
pub struct Wasi {
    ctx: WasiCtx,
    table: ResourceTable,
    stdout: Captured,
    stderr: Captured,
    /// The current call's deadline ([`Wasi::call_until`]), shared with every clock
    /// subscription of the instance: one made in an earlier call wakes by this call's deadline.
    until: Until,
    /// The guest's monotonic clock, to turn its instants into waits.
    clock: Monotonic,
}

/// A monotonic clock counting from its creation, as `wasmtime_wasi`'s own does; copies share
/// the start.
#[derive(Clone, Copy)]
struct Monotonic(std::time::Instant);

impl wasmtime_wasi::HostMonotonicClock for Monotonic {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// WASI with no authority, stdout and stderr captured.
impl Default for Wasi {
    fn default() -> Wasi {
        let stdout = Captured::default();
        let stderr = Captured::default();
        let clock = Monotonic(std::time::Instant::now());
        let ctx = WasiCtx::builder()
            .monotonic_clock(clock)
            // Random bytes are made in the host, between the guest's deadline checks: a call
            // asks for at most 64 KiB (wasmtime_wasi's own bound is 64 MiB).
            .max_random_size(64 << 10)
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Wasi {
            ctx,
            table: ResourceTable::new(),
            stdout,
            stderr,
            until: Until::default(),
            clock,
        }
    }
}

/// WASI for `linker` (capability `wasi`): `wasmtime_wasi`'s, with the monotonic clock's
/// subscriptions bounded by the call's deadline.
pub fn add_to_linker(linker: &mut Linker<Invocation>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap(
        "subscribe-duration",
        |mut store: wasmtime::StoreContextMut<'_, Invocation>, (nanos,): (u64,)| {
            let wasi = store
                .data_mut()
                .wasi
                .as_mut()
                .expect("a component importing WASI has WASI state");
            Ok((wasi.sleep(std::time::Duration::from_nanos(nanos))?,))
        },
    )?;
    clock.func_wrap(
        "subscribe-instant",
        |mut store: wasmtime::StoreContextMut<'_, Invocation>, (when,): (u64,)| {
            let wasi = store
                .data_mut()
                .wasi
                .as_mut()
                .expect("a component importing WASI has WASI state");
            let now = wasmtime_wasi::HostMonotonicClock::now(&wasi.clock);
            Ok((wasi.sleep(std::time::Duration::from_nanos(when.saturating_sub(now)))?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The deadline of the call running now (none before the first call: a subscription is then
/// ready at once), and whether a clock wait of that call was woken by it.
#[derive(Clone, Default)]
struct Until(Arc<Mutex<CallClock>>);

#[derive(Default)]
struct CallClock {
    until: Option<tokio::time::Instant>,
    woken: bool,
}

impl Until {
    fn get(&self) -> Option<tokio::time::Instant> {
        self.0.lock().expect("deadline lock").until
    }

    /// A wait of the call that set `until` ended there.
    fn woken_at(&self, until: tokio::time::Instant) {
        let mut clock = self.0.lock().expect("deadline lock");
        // A later call may have set its own deadline meanwhile; this wake is not its.
        if clock.until == Some(until) {
            clock.woken = true;
        }
    }
}

/// A clock subscription: ready at `wake`, or at the deadline of the call waiting on it if that
/// comes first.
struct Sleep {
    wake: tokio::time::Instant,
    until: Until,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Sleep {
    async fn ready(&mut self) {
        let Some(until) = self.until.get() else {
            return;
        };
        if self.wake < until {
            tokio::time::sleep_until(self.wake).await;
        } else {
            tokio::time::sleep_until(until).await;
            self.until.woken_at(until);
        }
    }
}

/// `called`, the outcome of a call into an instance with `wasi` state, unless a clock wait of
/// that call was woken by its deadline: then the interrupt the guest's next epoch check would
/// have met, whenever the ticker ticks.
pub fn past_deadline<T>(wasi: Option<&Wasi>, called: wasmtime::Result<T>) -> wasmtime::Result<T> {
    match called {
        Ok(_) if wasi.is_some_and(Wasi::woken_by_deadline) => Err(wasmtime::Trap::Interrupt.into()),
        called => called,
    }
}

impl Wasi {
    /// The call about to run ends at `deadline` from now.
    pub fn call_until(&mut self, deadline: std::time::Duration) {
        *self.until.0.lock().expect("deadline lock") = CallClock {
            until: tokio::time::Instant::now().checked_add(deadline + WAKE_AFTER_DEADLINE),
            woken: false,
        };
    }

    /// A pollable ready after `wait`, or at the deadline of the call waiting on it if that
    /// comes first.
    fn sleep(&mut self, wait: std::time::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        let now = tokio::time::Instant::now();
        // Past what the clock can say: the farthest it can; the deadline comes first anyway.
        let wake = now
            .checked_add(wait)
            .unwrap_or(now + std::time::Duration::from_secs(86_400 * 365));
        let sleep = self.table.push(Sleep {
            wake,
            until: self.until.clone(),
        })?;
        wasmtime_wasi::p2::subscribe(&mut self.table, sleep)
    }

    /// Whether a clock wait of the current call was woken by its deadline: the call is past
    /// its deadline, whether or not the guest's next epoch check has found that yet (the
    /// ticker may run late on a loaded machine).
    fn woken_by_deadline(&self) -> bool {
        self.until.0.lock().expect("deadline lock").woken
    }

    /// Write what the guest printed since the last call to the log; the last stderr line, if
    /// any, to explain a trap.
    pub fn flush_to_log(&self, step: &StepContext, message_id: &str) -> Option<String> {
        // The same bounds as the `log` capability: one line per entry, control characters
        // escaped, within the step's log budget.
        let allowed = |line: &str| step.log_budget.take(line.len());
        for line in self.stdout.take_lines() {
            let line = crate::plugin::bounds::log_entry(&line);
            if allowed(&line) {
                tracing::info!(target: "millrace::plugin", plant = %step.plant, route = %step.route, plugin = %step.plugin, message_id, stream = "stdout", "{line}");
            }
        }
        let mut last = None;
        for line in self.stderr.take_lines() {
            let line = crate::plugin::bounds::log_entry(&line);
            if allowed(&line) {
                tracing::warn!(target: "millrace::plugin", plant = %step.plant, route = %step.route, plugin = %step.plugin, message_id, stream = "stderr", "{line}");
            }
            if !line.trim().is_empty() {
                last = Some(line);
            }
        }
        last
    }
}

impl WasiView for Invocation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        let wasi = self
            .wasi
            .as_mut()
            .expect("only a component that imports WASI calls it, and its instances have WASI state (needs_wasi)");
        WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut wasi.table,
        }
    }
}

/// One captured output stream (stdout or stderr), shared by the instance's stream handles.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Buffer>>);

#[derive(Default)]
struct Buffer {
    bytes: Vec<u8>,
    dropped: usize,
}

impl Captured {
    fn push(&self, data: &[u8]) {
        let mut buffer = self.0.lock().expect("output buffer lock");
        let room = MAX_OUTPUT_BYTES.saturating_sub(buffer.bytes.len());
        let kept = data.len().min(room);
        buffer.bytes.extend_from_slice(&data[..kept]);
        buffer.dropped += data.len() - kept;
    }

    fn take_lines(&self) -> Vec<String> {
        let mut buffer = self.0.lock().expect("output buffer lock");
        if buffer.bytes.is_empty() && buffer.dropped == 0 {
            // What almost every call finds: nothing printed.
            return Vec::new();
        }
        let bytes = std::mem::take(&mut buffer.bytes);
        let dropped = std::mem::take(&mut buffer.dropped);
        let mut lines: Vec<String> = String::from_utf8_lossy(&bytes)
            .lines()
            .map(str::to_string)
            .collect();
        if dropped > 0 {
            lines.push(format!(
                "({dropped} more bytes dropped: over {MAX_OUTPUT_BYTES} bytes in one call)"
            ));
        }
        lines
    }
}

impl IsTerminal for Captured {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Captured {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Captured {
    async fn ready(&mut self) {}
}

impl OutputStream for Captured {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_OUTPUT_BYTES)
    }
}

impl tokio::io::AsyncWrite for Captured {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// What a guest's wait on `wait` makes of a call with `deadline`: whether the call then
    /// counts as past its deadline, with the guest having answered.
    async fn answered_after_waiting(wasi: &mut Wasi, deadline: Duration, wait: Duration) -> bool {
        wasi.call_until(deadline);
        let mut sleep = Sleep {
            wake: tokio::time::Instant::now() + wait,
            until: wasi.until.clone(),
        };
        sleep.ready().await;
        past_deadline(Some(wasi), Ok("answer")).is_err()
    }

    #[tokio::test]
    async fn a_call_whose_clock_wait_the_deadline_woke_is_past_it_whatever_the_ticker_did() {
        let mut wasi = Wasi::default();
        // No epoch ticker runs here: only the wake decides.
        assert!(
            answered_after_waiting(
                &mut wasi,
                Duration::from_millis(5),
                Duration::from_secs(3600)
            )
            .await
        );
        let interrupt = past_deadline(Some(&wasi), Ok(())).unwrap_err();
        assert_eq!(
            interrupt.downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::Interrupt)
        );
        // The next call starts afresh; a wait that ends before its deadline leaves it alone.
        assert!(
            !answered_after_waiting(&mut wasi, Duration::from_secs(60), Duration::from_millis(1))
                .await
        );
        // A failed call keeps its own error; an instance without WASI is never past this way.
        wasi.call_until(Duration::ZERO);
        wasi.until.woken_at(wasi.until.get().unwrap());
        let trap = past_deadline::<()>(
            Some(&wasi),
            Err(wasmtime::Trap::UnreachableCodeReached.into()),
        );
        assert_eq!(
            trap.unwrap_err().downcast_ref::<wasmtime::Trap>(),
            Some(&wasmtime::Trap::UnreachableCodeReached)
        );
        assert!(past_deadline(None, Ok(())).is_ok());
    }

    #[tokio::test]
    async fn a_wait_of_an_earlier_call_ending_at_its_deadline_does_not_mark_the_next_call() {
        let mut wasi = Wasi::default();
        wasi.call_until(Duration::from_millis(1));
        let earlier = wasi.until.get().unwrap();
        wasi.call_until(Duration::from_secs(60));
        // The earlier call's wait ends at the earlier deadline, after the next call began.
        wasi.until.woken_at(earlier);
        assert!(past_deadline(Some(&wasi), Ok(())).is_ok());
    }
}
