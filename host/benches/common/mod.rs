//! What the broker benchmarks share: the workspace, settings from the environment, the MES
//! record and the event the route makes of it, CPU time from `/proc`, medians.

use std::path::{Path, PathBuf};

/// The host's allocator (`host/src/main.rs`) for everything a benchmark runs in its own process:
/// a baseline (the plain lapin pipe, the plain hyper server, the native transform) allocates as
/// the `millrace` process it is compared with does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[allow(dead_code)] // only the benchmarks that drive a host over HTTP use it
pub mod host;

#[allow(dead_code)] // only the benchmarks that start a broker use it
#[path = "../../../tests/all/ports.rs"]
pub mod ports;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

pub fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The event the route makes of [`record`], made natively (the plugin crate against the SDK's
/// host double): the pipe publishes these bytes, so both sides put the same sizes on the broker.
pub fn route_output() -> Vec<u8> {
    use millrace_sdk::Plugin;
    let (plant, settings, table) = quickstart_step();
    let host = millrace_sdk::TestHost::new()
        .with_settings(settings)
        .with_table("work_centres", table);
    let plugin = mes_fixed_width::MesFixedWidth::new(&host).expect("settings load");
    let outputs = plugin
        .mediate(
            &host,
            millrace_sdk::Message {
                id: "m-0".into(),
                plant,
                route: "bench".into(),
                content_type: "text/plain".into(),
                headers: Vec::new(),
                body: record(),
            },
        )
        .expect("the record maps");
    outputs.into_iter().next().expect("one event").body
}

/// The quickstart's route: its plant, its step's settings and the work-centre table.
pub fn quickstart_step() -> (
    String,
    serde_json::Value,
    std::collections::BTreeMap<String, String>,
) {
    let config =
        millrace_host::config::Config::load(&root().join("examples/quickstart/millrace.toml"))
            .expect("quickstart config");
    let route = &config.routes[0];
    let settings: serde_json::Value =
        serde_json::from_str(route.steps[0].settings.document()).expect("settings are JSON");
    let table = config.plants[&route.plant]
        .get("work_centres")
        .expect("work_centres table")
        .clone();
    (route.plant.clone(), settings, table.into_iter().collect())
}

/// One 80-column MES production confirmation (the quickstart's format).
pub fn record() -> Vec<u8> {
    format!(
        "PC{:<12}{:<18}{:>10}{:<3}{:<6}{:<14}{:<8}A      ",
        "WO-1", "MAT-4711", "0000012500", "EA", "WC01", "20261127063000", "OP17"
    )
    .into_bytes()
}

/// CPU seconds (user + system) process `pid` used so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    stat_cpu_seconds(std::path::Path::new(&format!("/proc/{pid}/stat")))
}

/// CPU seconds (user + system) in a `/proc` `stat` file (a process's, or a thread's under
/// `task/`); 0 when unreadable.
pub fn stat_cpu_seconds(stat: &std::path::Path) -> f64 {
    let stat = std::fs::read_to_string(stat).unwrap_or_default();
    // Fields after the command name (which ends with ')'): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

/// The name of the host's lineage writer thread, as `/proc` shows it (cut to 15 bytes).
#[allow(dead_code)] // the broker and HTTP benchmarks ask
pub const LINEAGE_WRITER: &str = "millrace-lineag";

/// The `/proc` directories of the threads of process `pid` (`self`: this one) whose name is
/// `name` (every thread when `None`).
#[allow(dead_code)] // the broker and HTTP benchmarks ask
fn tasks(pid: &str, name: Option<&str>) -> Vec<std::path::PathBuf> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|task| Some(task.ok()?.path()))
        .filter(|task| {
            name.is_none_or(|name| {
                std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim() == name)
            })
        })
        .collect()
}

/// CPU seconds the threads named `name` of process `pid` (`self`: this one) have used so far.
#[allow(dead_code)] // the broker and HTTP benchmarks ask
pub fn threads_cpu_seconds(pid: &str, name: &str) -> f64 {
    tasks(pid, Some(name))
        .iter()
        .map(|task| stat_cpu_seconds(&task.join("stat")))
        .sum()
}

/// Whether process `pid` still runs (not gone, not a zombie waiting to be reaped).
#[allow(dead_code)] // only the AMQP benchmark asks
pub fn running(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some(s) if s != "Z" && s != "X")
}

/// Thread switches (voluntary and forced) the threads of process `pid` have made so far, summed
/// over those whose name is `name` (every thread when `None`): a thread's switches count when it
/// goes to sleep waiting for something and when the scheduler takes it off its core.
#[allow(dead_code)] // only the HTTP benchmark reads them
pub fn thread_switches(pid: &str, name: Option<&str>) -> u64 {
    tasks(pid, name)
        .iter()
        .filter_map(|task| std::fs::read_to_string(task.join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}
