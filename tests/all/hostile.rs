//! Hostile plugins, through the documented interfaces only: each attack is contained — the
//! message fails with a problem and a dead letter, or the candidate is refused — while a second
//! plant under steady load in the same test keeps being served without an error and with a
//! share of its throughput (its rate during the attack against its rate before it, same test).
//!
//! The attackers are built from source: the `hostile` Rust guest (tests/guests/hostile), and
//! plugins written here against the canonical ABI in WAT, for what no SDK would emit (one
//! buffer returned many times, many memories, a trap in `describe`, a forbidden import).

use crate::harness::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A plugin written against the canonical ABI. `mediate` returns `outputs` messages, all
/// pointing at one body of `body_len` bytes in its memory, with `content_type`.
pub struct WatPlugin {
    pub name: &'static str,
    pub version: &'static str,
    pub outputs: u32,
    pub body_len: u32,
    pub content_type: &'static str,
    pub describe_traps: bool,
    pub mediate_traps: bool,
    /// `mediate` loops until its deadline stops it.
    pub mediate_spins: bool,
    /// Component-level items added before the plugin's own core instance (extra core modules
    /// and instances, imports).
    pub extra: String,
    /// A function `mediate` calls first: an export of the core instance `$e`, which `extra`
    /// defines.
    pub mediate_calls: Option<&'static str>,
}

impl Default for WatPlugin {
    fn default() -> Self {
        WatPlugin {
            name: "wat-plugin",
            version: "1.0.0",
            outputs: 1,
            body_len: 2,
            content_type: "text/plain",
            describe_traps: false,
            mediate_traps: false,
            mediate_spins: false,
            extra: String::new(),
            mediate_calls: None,
        }
    }
}

/// Where the plugin keeps its outputs and their shared body.
const OUT: u32 = 8 << 20;
const BODY: u32 = 32 << 20;
const HEAP: u32 = 1 << 20;

fn wat_text(s: &str) -> String {
    s.bytes().map(|b| format!("\\{b:02x}")).collect()
}

impl WatPlugin {
    pub fn component(&self) -> Vec<u8> {
        let end = (OUT + self.outputs * 48)
            .max(BODY + self.body_len)
            .max(HEAP + (2 << 20));
        let pages = end.div_ceil(65536);
        let describe = if self.describe_traps {
            "unreachable".to_string()
        } else {
            format!(
                "i32.const 16 i32.const 256 i32.store
                 i32.const 20 i32.const {} i32.store
                 i32.const 24 i32.const 272 i32.store
                 i32.const 28 i32.const {} i32.store
                 i32.const 32 i32.const 512 i32.store
                 i32.const 36 i32.const 1 i32.store
                 i32.const 512 i32.const 288 i32.store
                 i32.const 516 i32.const 3 i32.store
                 i32.const 16",
                self.name.len(),
                self.version.len()
            )
        };
        let text = format!(
            r#"(component
  {extra}
  (core module $m
    {import}
    (memory (export "memory") {pages})
    (global $heap (mut i32) (i32.const {HEAP}))
    (func (export "realloc") (param i32 i32 i32 i32) (result i32)
      (local $ptr i32)
      global.get $heap
      local.get 2 i32.const 1 i32.sub i32.add
      local.get 2 i32.const 1 i32.sub i32.const -1 i32.xor i32.and
      local.tee $ptr
      local.get 3 i32.add global.set $heap
      (block $ok
        global.get $heap memory.size i32.const 16 i32.shl i32.le_u br_if $ok
        global.get $heap memory.size i32.const 16 i32.shl i32.sub
        i32.const 65535 i32.add i32.const 16 i32.shr_u memory.grow
        i32.const -1 i32.ne br_if $ok
        unreachable)
      local.get $ptr)
    (func (export "describe") (result i32) {describe})
    (func (export "check-settings") (result i32) i32.const 64)
    (func (export "mediate") (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
      (local $i i32) (local $e i32)
      {call}
      {trap}
      (block $done (loop $next
        local.get $i i32.const {outputs} i32.ge_u br_if $done
        local.get $i i32.const 48 i32.mul i32.const {OUT} i32.add local.set $e
        local.get $e i32.const 420 i32.store offset=0
        local.get $e i32.const 1 i32.store offset=4
        local.get $e i32.const 420 i32.store offset=8
        local.get $e i32.const 1 i32.store offset=12
        local.get $e i32.const 420 i32.store offset=16
        local.get $e i32.const 1 i32.store offset=20
        local.get $e i32.const 300 i32.store offset=24
        local.get $e i32.const {ct_len} i32.store offset=28
        local.get $e i32.const 0 i32.store offset=32
        local.get $e i32.const 0 i32.store offset=36
        local.get $e i32.const {BODY} i32.store offset=40
        local.get $e i32.const {body_len} i32.store offset=44
        local.get $i i32.const 1 i32.add local.set $i
        br $next))
      i32.const 128 i32.const 0 i32.store8
      i32.const 132 i32.const {OUT} i32.store
      i32.const 136 i32.const {outputs} i32.store
      i32.const 128)
    (data (i32.const 256) "{name}")
    (data (i32.const 272) "{version}")
    (data (i32.const 288) "*/*")
    (data (i32.const 300) "{ct}")
    (data (i32.const 420) "x")
    (data (i32.const {BODY}) "ok"))
  (core instance $i (instantiate $m {with}))
  (type $message' (record (field "id" string) (field "plant" string) (field "route" string)
    (field "content-type" string) (field "headers" (list (tuple string string))) (field "body" (list u8))))
  (export $message "message" (type $message'))
  (type $rejection' (record (field "reason" string) (field "field" (option string)) (field "position" (option u32))))
  (export $rejection "rejection" (type $rejection'))
  (type $retry' (record (field "reason" string) (field "after-ms" (option u32))))
  (export $retry "retry" (type $retry'))
  (type $error' (variant (case "rejected" $rejection) (case "retry-later" $retry)))
  (export $error "mediation-error" (type $error'))
  (type $info' (record (field "name" string) (field "version" string) (field "accepts" (list string)) (field "emits" (list string))))
  (export $info "plugin-info" (type $info'))
  (func (export "describe") (result $info)
    (canon lift (core func $i "describe") (memory $i "memory") (realloc (func $i "realloc"))))
  (func (export "check-settings") (result (result (error string)))
    (canon lift (core func $i "check-settings") (memory $i "memory") (realloc (func $i "realloc"))))
  (func (export "mediate") (param "input" $message) (result (result (list $message) (error $error)))
    (canon lift (core func $i "mediate") (memory $i "memory") (realloc (func $i "realloc")))))"#,
            extra = self.extra,
            import = self.mediate_calls.map_or(String::new(), |f| {
                format!("(import \"e\" \"{f}\" (func $first))")
            }),
            call = if self.mediate_calls.is_some() {
                "call $first"
            } else {
                ""
            },
            with = if self.mediate_calls.is_some() {
                "(with \"e\" (instance $e))"
            } else {
                ""
            },
            trap = if self.mediate_traps {
                "unreachable"
            } else if self.mediate_spins {
                "(loop $spin br $spin)"
            } else {
                ""
            },
            outputs = self.outputs,
            body_len = self.body_len,
            ct_len = self.content_type.len(),
            name = wat_text(self.name),
            version = wat_text(self.version),
            ct = wat_text(self.content_type),
        );
        wat::parse_str(&text).unwrap_or_else(|e| panic!("the WAT plugin does not assemble: {e}"))
    }

    /// Write the component to `dir/FILE` and give its path.
    pub fn write(&self, dir: &std::path::Path, file: &str) -> std::path::PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, self.component()).expect("write the WAT plugin");
        path
    }
}

/// Extra component items: `count` core modules each defining a memory of `mib` MiB, each
/// instantiated.
fn memories(count: usize, mib: u32) -> String {
    (0..count)
        .map(|k| {
            format!(
                "(core module $mem{k} (memory {}))\n(core instance $memi{k} (instantiate $mem{k}))\n",
                mib * 16
            )
        })
        .collect()
}

/// Plant B under steady load: one client posting `ok` to its route `steady` as fast as it is
/// answered, counting answers and failures.
/// Requests a [`Bystander`] makes at least during an attack.
const MIN_REQUESTS: u64 = 20;

pub struct Bystander {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<String>, Duration)>,
}

/// What plant B saw while a [`Bystander`] ran.
#[derive(Debug)]
pub struct Served {
    pub answered: u64,
    pub failures: Vec<String>,
    pub per_second: f64,
}

impl Bystander {
    pub fn start(url: &str) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let (url, flag) = (url.to_string(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let mut answered = 0;
            let mut failures = Vec::new();
            // At least MIN_REQUESTS, however short the attack: a window of one request or
            // none measures nothing (bounded by the guard all the same).
            while (!flag.load(Ordering::SeqCst)
                || answered + (failures.len() as u64) < MIN_REQUESTS)
                && started.elapsed() < GUARD
            {
                match try_request(
                    &url,
                    "POST",
                    "/v1/routes/steady/messages",
                    Some("text/plain"),
                    &[],
                    b"ok",
                ) {
                    Ok(reply) if reply.status == 200 && reply.body == "ok" => answered += 1,
                    Ok(reply) => failures.push(format!("{} {}", reply.status, reply.body)),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (answered, failures, started.elapsed())
        });
        Bystander { stop, thread }
    }

    pub fn finish(self) -> Served {
        self.stop.store(true, Ordering::SeqCst);
        let (answered, failures, took) = self.thread.join().expect("bystander");
        Served {
            answered,
            failures,
            per_second: answered as f64 / took.as_secs_f64(),
        }
    }

    /// Plant B's rate alone for `span`, as a baseline measured in the same test.
    pub fn baseline(url: &str, span: Duration) -> Served {
        let alone = Bystander::start(url);
        std::thread::sleep(span);
        alone.finish()
    }
}

/// Plant B kept being served during an attack: no failure, and at least a tenth of the rate it
/// had alone in the same test (a starved plant got 0.3–6 % before plants had their own slots).
pub fn assert_served(what: &str, baseline: &Served, during: &Served) {
    assert!(
        during.failures.is_empty(),
        "{what}: plant B failed {} time(s), e.g. {:?}",
        during.failures.len(),
        during.failures.first()
    );
    assert!(
        during.answered > 0,
        "{what}: plant B was not answered at all"
    );
    let ratio = during.per_second / baseline.per_second;
    println!(
        "{what}: plant B {} answers, {:.0} msg/s during vs {:.0} alone ({ratio:.2}×)",
        during.answered, during.per_second, baseline.per_second
    );
    assert!(
        ratio >= 0.1,
        "{what}: plant B got {ratio:.3} of its throughput ({:.0} vs {:.0} msg/s)",
        during.per_second,
        baseline.per_second
    );
}

/// Plant A's route `spin`: the spin guest (passes `ok` through, loops on anything else), stopped
/// at `deadline_ms`.
fn spin_route(deadline_ms: u32) -> String {
    route_toml(
        "spin",
        &guest("guest-spin"),
        r#"["log"]"#,
        &format!("deadline_ms = {deadline_ms}"),
    )
}

/// One message to the `spin` route that loops until its deadline.
fn loop_once(url: &str) -> Reply {
    request(
        url,
        "POST",
        "/v1/routes/spin/messages",
        Some("text/plain"),
        &[],
        b"loop",
    )
}

/// Plant A with the attackers' routes, plant B with `steady` (the `act` guest).
fn workspace(extra_routes: &str) -> Workspace {
    let steady = act_route("steady", "").replace("plant = \"plant-a\"", "plant = \"plant-b\"");
    let hostile = route_toml(
        "hostile",
        &guest("guest-hostile"),
        r#"["log", "state"]"#,
        // Generous: the attacks are stopped by their bounds, not by the deadline.
        "deadline_ms = 10000",
    );
    Workspace::new(&format!(
        "[host]\nadmin = \"127.0.0.1:0\"\nmax_in_flight = 4\n\n[limits]\n# Each attack is repeated: the circuit breaker (its own test) would stop them.\nquarantine_after = 0\n\n[plants.plant-a]\nstate_max_keys = 50\n[plants.plant-b]\n\n{steady}\n{hostile}\n{extra_routes}"
    ))
}

/// The host's resident memory now, from /proc.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
fn outputs_headers_and_reasons_past_their_bounds_fail_the_message_not_the_host() {
    let dir = tempfile::tempdir().unwrap();
    // One 60 MB buffer returned twice, and 300,000 outputs of it: the host stops copying.
    let twice = WatPlugin {
        outputs: 2,
        body_len: 60 << 20,
        ..WatPlugin::default()
    }
    .write(dir.path(), "twice.wasm");
    let many = WatPlugin {
        name: "wat-many",
        outputs: 300_000,
        body_len: 2,
        ..WatPlugin::default()
    }
    .write(dir.path(), "many.wasm");
    let routes = format!(
        "{}\n{}",
        route_toml("twice", &twice, "[]", "memory_mib = 128"),
        route_toml("many", &many, "[]", "memory_mib = 64"),
    );
    let ws = workspace(&routes);
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    let rss_before = rss_mib(host.pid());
    let mut seen = Vec::new();
    for _ in 0..3 {
        for (route, body, status, expected) in [
            ("twice", "go", 502, "plugin-limit"),
            ("many", "go", 502, "plugin-limit"),
            ("hostile", "outputs 5000", 502, "plugin-limit"),
            ("hostile", "big 40", 502, "plugin-limit"),
            ("hostile", "header", 502, "plugin-limit"),
            ("hostile", "reason 20", 502, "plugin-limit"),
            ("hostile", "reason 2", 422, "rejected"),
            // Recursion without end: the Wasm stack limit traps it.
            ("hostile", "recurse", 502, "plugin-trap"),
        ] {
            let reply = host.post(route, Some("text/plain"), body);
            assert_eq!(reply.status, status, "{route} {body}: {}", reply.body);
            assert_eq!(reply.kind(), expected, "{route} {body}: {}", reply.body);
            // Every answer is a bounded problem document.
            assert!(
                reply.body.len() < 8192,
                "{route} {body}: {} bytes",
                reply.body.len()
            );
            seen.push(reply.json()["detail"].as_str().unwrap().to_string());
        }
    }
    let rss_after = rss_mib(host.pid());
    assert_served("outputs past their bounds", &baseline, &during.finish());
    assert!(seen[0].contains("more than 16384 KiB"), "{}", seen[0]);
    assert!(seen[1].contains("more than 16384 KiB"), "{}", seen[1]);
    assert!(
        seen[2].contains("returned 5000 outputs; at most 1000"),
        "{}",
        seen[2]
    );
    assert!(seen[3].contains("more than 16384 KiB"), "{}", seen[3]);
    assert!(seen[7].contains("stack"), "{}", seen[7]);
    assert!(
        seen[4].contains("content type \"text/plain\\r\\nx-injected: yes\""),
        "{}",
        seen[4]
    );
    assert!(seen[5].contains("more than 16384 KiB"), "{}", seen[5]);
    assert!(
        seen[6].ends_with("more bytes cut)"),
        "{}",
        &seen[6][seen[6].len() - 60..]
    );
    println!("host RSS {rss_before} MiB before, {rss_after} MiB after 24 attacks");
    assert!(
        rss_after < 1024,
        "the host holds {rss_after} MiB after the attacks"
    );
    // Each failed message is a dead letter of kind `limit` (or `rejected`, or `trap` for the
    // recursion), its reason bounded.
    let out = ws.millrace(&["dlq", "list", "--json"]);
    let entries: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 24);
    for entry in entries {
        assert!(
            ["limit", "rejected", "trap"].contains(&entry["kind"].as_str().unwrap()),
            "{entry}"
        );
        assert!(entry["reason"].as_str().unwrap().len() < 5000);
    }
}

#[test]
fn memories_declared_together_past_the_cap_are_refused_at_instantiation() {
    let dir = tempfile::tempdir().unwrap();
    let plain = WatPlugin::default().write(dir.path(), "plain.wasm");
    let ws = workspace(&route_toml("mem", &plain, "[]", "memory_mib = 64"));
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    // Ten extra memories of 60 MiB each, every one under the cap of 64: 600 MiB in one
    // instance. The gate instantiates it for the step and the instance's limiter refuses.
    let bomb = WatPlugin {
        version: "2.0.0",
        extra: memories(10, 60),
        ..WatPlugin::default()
    };
    let refused = host.admin("POST", "/v1/plants/plant-a/plugins", &bomb.component());
    assert_eq!(refused.status, 422, "{}", refused.body);
    let detail = refused.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("its memories together need more than the step's cap of 64 MiB"),
        "{detail}"
    );
    // Two of 30 MiB each (60 MiB together, with the plugin's own 34 MiB: over 64) are refused
    // too; one of 8 MiB fits and is taken.
    let two = WatPlugin {
        version: "2.0.1",
        extra: memories(2, 30),
        ..WatPlugin::default()
    };
    assert_eq!(
        host.admin("POST", "/v1/plants/plant-a/plugins", &two.component())
            .status,
        422
    );
    let fits = WatPlugin {
        version: "2.0.2",
        extra: memories(1, 8),
        ..WatPlugin::default()
    };
    let taken = host.admin("POST", "/v1/plants/plant-a/plugins", &fits.component());
    assert_eq!(taken.status, 201, "{}", taken.body);
    assert_served("memory bombs", &baseline, &during.finish());
    assert_eq!(host.post("mem", Some("text/plain"), "go").status, 200);
}

#[test]
fn candidates_that_trap_in_describe_import_the_unknown_or_carry_spinning_vectors_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let plain = WatPlugin::default().write(dir.path(), "plain.wasm");
    let spin = route_toml(
        "spin",
        &guest("guest-spin"),
        r#"["log"]"#,
        "deadline_ms = 300",
    );
    let ws = workspace(&(route_toml("wat", &plain, "[]", "") + "\n" + &spin));
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    let upload = |bytes: &[u8]| host.admin("POST", "/v1/plants/plant-a/plugins", bytes);
    let detail = |reply: Reply| {
        assert_eq!(reply.status, 422, "{}", reply.body);
        reply.json()["detail"].as_str().unwrap().to_string()
    };

    let traps = WatPlugin {
        version: "2.0.0",
        describe_traps: true,
        ..WatPlugin::default()
    };
    let why = detail(upload(&traps.component()));
    assert!(
        why.contains("failed while loading") && why.contains("unreachable"),
        "{why}"
    );

    let imports = WatPlugin {
        version: "2.0.1",
        extra: "(import \"acme:net/http@1.0.0\" (instance))".into(),
        ..WatPlugin::default()
    };
    let why = detail(upload(&imports.component()));
    assert!(
        why.contains("imports acme:net/http@1.0.0, which millrace does not provide"),
        "{why}"
    );

    // guest-spin with a sample vector that loops: stopped at the step's deadline (300 ms),
    // refused, while plant B is served.
    let vectors = dir.path().join("vectors");
    std::fs::create_dir_all(vectors.join("01-loops")).unwrap();
    std::fs::write(vectors.join("01-loops/input.txt"), "loop").unwrap();
    std::fs::write(vectors.join("01-loops/expected.json"), r#"{"outputs": []}"#).unwrap();
    // Bundled without running the cases (`plugin bundle` would run them first and refuse).
    let bundled =
        millrace_host::conformance::bundle(&std::fs::read(guest("guest-spin")).unwrap(), &vectors)
            .unwrap();
    let started = Instant::now();
    let why = detail(upload(&bundled));
    assert!(
        why.contains("01-loops") && why.contains("deadline"),
        "{why}"
    );
    println!("spinning vectors refused after {:?}", started.elapsed());
    assert_served("gate attacks", &baseline, &during.finish());
}

/// A core module whose start function makes a `call_indirect` checked against a declared
/// subtype (the function-references and GC proposals). wasmtime 48.0.8 built without its `gc`
/// feature, as the host is, aborted the whole process on that check (GHSA-rc4p-x33f-vpr2).
const DECLARED_SUBTYPE_CALL: &str = "(core module $subtype
    (type $f (sub (func)))
    (type $g (sub $f (func)))
    (table 1 funcref)
    (func $h (type $g))
    (elem (i32.const 0) func $h)
    (func $go i32.const 0 call_indirect (type $f))
    (start $go))
  (core instance $subtype_i (instantiate $subtype))";

#[test]
fn a_candidate_using_a_wasm_proposal_the_host_does_not_offer_is_refused_and_the_host_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let plain = WatPlugin::default().write(dir.path(), "plain.wasm");
    let ws = workspace(&route_toml("wat", &plain, "[]", ""));
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);

    let subtype = WatPlugin {
        version: "2.0.0",
        extra: DECLARED_SUBTYPE_CALL.into(),
        ..WatPlugin::default()
    };
    let refused = |plugin: &WatPlugin| {
        let reply = host.admin("POST", "/v1/plants/plant-a/plugins", &plugin.component());
        assert_eq!(reply.status, 422, "{}", reply.body);
        reply.json()["detail"].as_str().unwrap().to_string()
    };
    let why = refused(&subtype);
    assert!(
        why.contains("gc proposal must be enabled to use subtypes"),
        "{why}"
    );
    // A typed call (`call_ref`), function references alone.
    let call_ref = WatPlugin {
        version: "2.0.1",
        extra: "(core module $typed
    (type $v (func))
    (func $h (type $v))
    (elem declare func $h)
    (func (export \"go\") (call_ref $v (ref.func $h))))"
            .into(),
        ..WatPlugin::default()
    };
    let why = refused(&call_ref);
    assert!(
        why.contains("function references support is not enabled"),
        "{why}"
    );

    // The host is up, plant A's route serves on its version, plant B was served throughout.
    let reply = host.post("wat", Some("text/plain"), "x");
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
    assert_served("a declared subtype", &baseline, &during.finish());
    assert!(host.stop().success(), "the host exits cleanly");

    // Run locally, the same component is refused with the reason: exit 1, not an abort.
    let file = subtype.write(dir.path(), "subtype.wasm");
    std::fs::write(dir.path().join("in.txt"), "x").unwrap();
    let out = ws.millrace(&[
        "plugin",
        "test",
        file.to_str().unwrap(),
        "--input",
        dir.path().join("in.txt").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("to use subtypes"), "{stderr}");
}

/// WASI imports and a core instance `$e` whose `block` waits on the monotonic clock for
/// `nanos` (as a guest's `sleep` does): the guest runs no code meanwhile.
pub fn clock_wait(nanos: u64) -> String {
    clock_guest(&format!(
        "(func (export \"block\") (call $block (call $subscribe (i64.const {}))))",
        nanos as i64
    ))
}

/// [`clock_wait`], but the subscription is made in one call and waited on in the next: the
/// first call of an instance subscribes for `nanos` and keeps the pollable without waiting,
/// every later call waits on that pollable.
fn clock_wait_next_call(nanos: u64) -> String {
    clock_guest(&format!(
        "(global $held (mut i32) (i32.const -1))
    (func (export \"block\")
      global.get $held i32.const -1 i32.eq
      if
        (global.set $held (call $subscribe (i64.const {})))
      else
        (call $block (global.get $held))
      end)",
        nanos as i64
    ))
}

/// WASI's clock and poll imports, lowered into a core module with `body` (which may call
/// `$subscribe` and `$block`), instantiated as `$e`.
fn clock_guest(body: &str) -> String {
    format!(
        r#"(import "wasi:io/poll@0.2.0" (instance $poll
    (export "pollable" (type $p (sub resource)))
    (export "[method]pollable.block" (func (param "self" (borrow $p))))))
  (alias export $poll "pollable" (type $pollable))
  (import "wasi:clocks/monotonic-clock@0.2.0" (instance $clock
    (alias outer 1 $pollable (type $p))
    (export "pollable" (type $pe (eq $p)))
    (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))))
  (core func $subscribe (canon lower (func $clock "subscribe-duration")))
  (core func $wait (canon lower (func $poll "[method]pollable.block")))
  (core module $blocks
    (import "c" "subscribe" (func $subscribe (param i64) (result i32)))
    (import "p" "block" (func $block (param i32)))
    {body})
  (core instance $e (instantiate $blocks
    (with "c" (instance (export "subscribe" (func $subscribe))))
    (with "p" (instance (export "block" (func $wait))))))"#
    )
}

/// A workspace with route `name` of plant A: a WAT plugin granted `wasi` whose `mediate` first
/// calls `block` of `extra` ([`clock_wait`], [`clock_wait_next_call`]), under a 300 ms deadline.
fn clock_route(dir: &std::path::Path, name: &str, extra: String) -> Workspace {
    let plugin = WatPlugin {
        extra,
        mediate_calls: Some("block"),
        ..WatPlugin::default()
    }
    .write(dir, &format!("{name}.wasm"));
    workspace(&route_toml(
        name,
        &plugin,
        r#"["wasi"]"#,
        "deadline_ms = 300",
    ))
}

#[test]
fn a_wasi_guest_waiting_on_the_clock_past_its_deadline_is_stopped_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    // Waits for ever (u64::MAX ns) in every call.
    let ws = clock_route(dir.path(), "waits", clock_wait(u64::MAX));
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    for _ in 0..3 {
        let reply = host.post("waits", Some("text/plain"), "x");
        assert_eq!(
            (reply.status, reply.kind()),
            (503, "plugin-deadline".to_string()),
            "{}",
            reply.body
        );
    }
    assert_served("guests waiting on the clock", &baseline, &during.finish());
    // Nothing still waits: the host stops at once, its in-flight messages finished.
    assert!(host.stop().success(), "the host exits cleanly");
}

#[test]
fn a_clock_subscription_made_in_an_earlier_call_wakes_by_the_deadline_of_the_call_waiting_on_it() {
    let dir = tempfile::tempdir().unwrap();
    // The first call subscribes for ever and returns; the next call of the same (reused)
    // instance waits on that subscription.
    let ws = clock_route(dir.path(), "later", clock_wait_next_call(u64::MAX));
    let host = ws.start();
    let first = host.post("later", Some("text/plain"), "x");
    assert_eq!((first.status, first.body.as_str()), (200, "ok"));
    // The first call's deadline is past. Woken by it, the wait would end at once and the call
    // answer `ok`; it must end at this call's deadline instead.
    std::thread::sleep(Duration::from_millis(600));
    let second = host.post("later", Some("text/plain"), "x");
    assert_eq!(second.status, 503, "{}", second.body);
    assert_eq!(second.kind(), "plugin-deadline", "{}", second.body);
    assert!(host.stop().success(), "the host exits cleanly");
}

#[test]
fn a_looping_plugin_flooded_with_messages_takes_only_its_plants_share_of_the_host() {
    // Plant A: a plugin that loops until its deadline, sent as many concurrent messages as the
    // host has slots and more. Plant A may hold half the host's slots; the rest wait (at most
    // max_waiting) or are answered 503 plant-busy at once.
    let ws = workspace(&spin_route(1000));
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    let url = host.url.clone();
    let flood: Vec<_> = (0..12)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        let reply = loop_once(&url);
                        (reply.status, reply.kind())
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let answers: Vec<(u16, String)> = flood
        .into_iter()
        .flat_map(|t| t.join().expect("flood client"))
        .collect();
    assert_served("a looping plant flooded", &baseline, &during.finish());
    let busy = answers.iter().filter(|(_, k)| k == "plant-busy").count();
    let deadline = answers
        .iter()
        .filter(|(_, k)| k == "plugin-deadline")
        .count();
    println!("plant A: {deadline} ran to their deadline, {busy} refused as plant-busy");
    assert_eq!(busy + deadline, answers.len(), "{answers:?}");
    assert!(
        busy > 0,
        "12 clients against 2 slots and 8 waiting places: some refused"
    );
    let refused = answers.iter().find(|(s, _)| *s == 503).unwrap();
    assert_eq!(refused.0, 503);
}

#[test]
fn only_capabilities_a_component_imports_keep_its_chain_off_inline_runs() {
    use millrace_host::pipeline::workers::SHORT_RUNS_TO_INLINE;
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        return; // one async worker: none to spare, no chain runs inline anyway
    }
    // The spin guest imports `log` only; its step also grants `state` and `wasi`, which may
    // block but which it cannot call. The act guest imports `state`: granted the same, its
    // chain stays on the mediation threads.
    let spin = route_toml(
        "spin",
        &guest("guest-spin"),
        r#"["log", "state", "wasi"]"#,
        "",
    );
    let act = route_toml(
        "act",
        &guest("guest-act"),
        r#"["log", "state", "wasi"]"#,
        "",
    );
    let ws = workspace(&format!("{spin}\n{act}"));
    let host = ws.start();
    let inline = |route: &str| {
        counter(
            &host,
            &format!("millrace_chains_inline_total{{plant=\"plant-a\",route=\"{route}\"}}"),
        )
    };
    for route in ["spin", "act"] {
        for _ in 0..SHORT_RUNS_TO_INLINE * 10 {
            let reply = host.post(route, Some("text/plain"), "ok");
            assert_eq!(reply.status, 200, "{route}: {}", reply.body);
        }
    }
    assert!(
        inline("spin") > 0,
        "a chain whose grants it cannot call runs inline"
    );
    assert_eq!(inline("act"), 0, "a chain that may block never runs inline");
}

#[test]
fn a_chain_that_turns_to_looping_after_earning_inline_runs_holds_one_async_worker_at_most() {
    use millrace_host::pipeline::workers::{
        LONG_RUNS_TO_STAY_OFF, SHORT_RUNS_OFF, SHORT_RUNS_TO_INLINE, TIMED_RUNS,
    };
    const EARN_WITHIN: u32 = 200;
    // Plant A's spin route answers `ok` at once: after SHORT_RUNS_TO_INLINE of those, its chain
    // runs on the async worker that took the request. Then it loops until its deadline.
    let ws = workspace(&spin_route(2000));
    // Plant A's share of slots: 4 loops at once, more than the host has async workers.
    let config = std::fs::read_to_string(ws.config()).unwrap();
    ws.write(
        "millrace.toml",
        &config.replace("max_in_flight = 4", "max_in_flight = 8"),
    );
    let mut host = ws.start();
    let inline = |host: &Host, route: &str| {
        counter(
            host,
            &format!("millrace_chains_inline_total{{plant=\"plant-a\",route=\"{route}\"}}"),
        )
    };
    let ok = |host: &Host| {
        let reply = host.post("spin", Some("text/plain"), "ok");
        assert_eq!(reply.status, 200, "{}", reply.body);
    };
    // Short runs until the chain runs inline: SHORT_RUNS_TO_INLINE in a row, more when a cold
    // start (first runs of the host's code, an instance's first touches of memory) ran long.
    let earn = |host: &Host| {
        let before = inline(host, "spin");
        for _ in 0..EARN_WITHIN {
            ok(host);
            if inline(host, "spin") > before {
                return;
            }
        }
        panic!("the chain did not run inline within {EARN_WITHIN} short runs");
    };
    // One short run fewer than earn inline runs: none of them ran inline.
    let back_on_the_mediation_threads = |host: &Host, after: &str| {
        let before = inline(host, "spin");
        for _ in 1..SHORT_RUNS_TO_INLINE {
            ok(host);
        }
        assert_eq!(
            inline(host, "spin"),
            before,
            "after {after}: back on the mediation threads"
        );
    };
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        // One async worker: none to spare, so no chain runs inline.
        for _ in 0..SHORT_RUNS_TO_INLINE * 2 {
            ok(&host);
        }
        assert_eq!(inline(&host, "spin"), 0);
        return;
    }
    earn(&host);
    let earned = inline(&host, "spin");

    // Four loops at once (the plant's share of slots): one may hold an async worker, the
    // others loop on mediation threads; the runtime keeps its other workers for plant B and the
    // admin API.
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    let loops: Vec<_> = (0..4)
        .map(|_| {
            let url = host.url.clone();
            std::thread::spawn(move || loop_once(&url).kind())
        })
        .collect();
    for kind in loops.into_iter().map(|t| t.join().expect("loop client")) {
        assert_eq!(kind, "plugin-deadline");
    }
    let spare = std::thread::available_parallelism().map_or(1, usize::from) - 1;
    let looped_inline = inline(&host, "spin") - earned;
    assert!(
        looped_inline as usize <= spare,
        "{looped_inline} of the 4 concurrent loops ran inline; the runtime has {spare} worker(s) to spare"
    );
    assert_served(
        "a looping chain that had run inline",
        &baseline,
        &during.finish(),
    );
    assert_eq!(
        counter(&host, "millrace_chains_inline_total{plant=\"plant-b\""),
        0,
        "plant B's chain may block (it is granted state): it never runs inline"
    );

    // A long run sends the chain back to the mediation threads until it earns inline runs
    // again; after LONG_RUNS_TO_STAY_OFF it is taken off for SHORT_RUNS_OFF short runs.
    for long in 1..=LONG_RUNS_TO_STAY_OFF {
        back_on_the_mediation_threads(&host, &format!("long run {long}"));
        if long == LONG_RUNS_TO_STAY_OFF {
            break;
        }
        earn(&host);
        let reply = loop_once(&host.url);
        assert_eq!(reply.kind(), "plugin-deadline", "{}", reply.body);
    }
    // Plant B's chain may be taken off too (the bystanders' runs can run long on a loaded
    // machine): the line wanted is the spin route's.
    let line = host.wait_for_log_where(
        |line| {
            line.contains("runs on the mediation threads until it has run short")
                && line.contains("route=spin")
        },
        "the spin route taken off the async workers",
    );
    assert!(
        line.contains("cpu_us=") && line.contains(&format!("short_runs_off={SHORT_RUNS_OFF}")),
        "{line}"
    );
    let off = inline(&host, "spin");
    for _ in 0..SHORT_RUNS_TO_INLINE * 3 {
        ok(&host);
    }
    assert_eq!(inline(&host, "spin"), off, "off");
    // Back after SHORT_RUNS_OFF short runs (a chain taken off by a burst of the machine's
    // hiccups is not off for good); the next time it would stay off twice as long. Requests
    // since it was taken off: the 15 after the last long run, and the 48 above. (Those that
    // made an instance are not counted as runs — the first after the long run's trap, one each
    // `instance_reuse` — so the chain comes back a few requests after these; `earn` allows it
    // 200.)
    let since_off = (SHORT_RUNS_TO_INLINE - 1) + SHORT_RUNS_TO_INLINE * 3;
    for _ in since_off..SHORT_RUNS_OFF - 1 {
        ok(&host);
    }
    assert_eq!(
        inline(&host, "spin"),
        off,
        "off until SHORT_RUNS_OFF short runs"
    );
    earn(&host);

    // Runs read the CPU clock at their start only in a stretch (which lasted while the chain
    // was off); after TIMED_RUNS short runs back it is over (unless a run long in wall time, a
    // hiccup of a loaded machine, started another; the runs that made an instance do not
    // count, hence a few more), and a loop then runs untimed. It is not counted toward taking
    // the chain off, but it sends the chain back to the mediation threads, as a timed long run
    // does: either way, the chain must not stay inline.
    for _ in 0..TIMED_RUNS + 50 {
        ok(&host);
    }
    let reply = loop_once(&host.url);
    assert_eq!(reply.kind(), "plugin-deadline", "{}", reply.body);
    back_on_the_mediation_threads(&host, "an untimed long run");
    earn(&host);
}

#[test]
fn a_message_fanned_out_past_its_budget_stops_at_the_budget_not_at_outputs_times_deadline() {
    // Step 1 makes 300 outputs; step 2 works ~0.3 s on each: 90 s of deadlines, but the
    // message's budget across the chain is 2 s.
    let fan = route_toml("fan", &guest("guest-hostile"), r#"["log", "state"]"#, "").replace(
        "source = \"http\"",
        "source = \"http\"\nmessage_budget_ms = 2000",
    ) + &format!(
        "\n[[routes.fan.steps]]\nplugin = \"{}\"\ngrants = [\"log\", \"state\"]\ndeadline_ms = 5000\n",
        guest("guest-act").display()
    );
    let ws = workspace(&fan);
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    // Within the budget: 300 outputs that step 2 passes on at once.
    let quick = host.post("fan", Some("text/plain"), "fan 300 ok");
    assert_eq!(quick.status, 200, "{}", quick.body);
    assert_eq!(quick.body.matches("millrace-output-id:").count(), 300);
    // Past it: each of the 300 outputs keeps step 2 busy.
    let slow = host.post("fan", Some("text/plain"), "fan 300 work 300000000");
    assert_served("a fan-out past its budget", &baseline, &during.finish());
    assert_eq!(slow.status, 503, "{}", slow.body);
    assert_eq!(slow.kind(), "message-budget", "{}", slow.body);
    assert_eq!(slow.json()["step"], 2);
    assert!(
        slow.json()["detail"]
            .as_str()
            .unwrap()
            .contains("budget of 2000 ms"),
        "{}",
        slow.body
    );
}

#[test]
fn log_entries_below_the_hosts_level_cost_no_log_budget() {
    let ws = workspace("");
    let mut host = Host::start(&ws.config(), &[]);
    // 200 entries at `debug` (~66 KB asked, ~2 KiB each once cut), which the default level
    // (`info`) drops: were they counted, they would empty the step's budget (a burst of
    // 128 KiB) and the error after them would be dropped.
    let debug = host.post("hostile", Some("text/plain"), "debug-log 200");
    assert_eq!(debug.status, 200, "{}", debug.body);
    let error = host.post("hostile", Some("text/plain"), "log 1");
    assert_eq!(error.status, 200, "{}", error.body);
    assert!(host.stop_in_place().success());
    let log = host.drain_log();
    let written = log.iter().filter(|l| l.contains("flood")).count();
    assert_eq!(written, 1, "only the error entry is written: {log:#?}");
    assert!(
        !log.iter().any(|l| l.contains("plugin log entries dropped")),
        "{log:#?}"
    );
}

#[test]
fn log_entries_at_a_level_the_host_writes_are_written_whatever_filters_select_on_fields() {
    let ws = workspace("");
    // Debug for plugins, but warn for lines carrying `stream` (what WASI guests print): a
    // plugin's own entries have no such field, so its debug entry is written.
    let filter = "info,millrace::plugin=debug,millrace::plugin[{stream}]=warn";
    let mut host = Host::start(&ws.config(), &[("RUST_LOG", filter)]);
    let debug = host.post("hostile", Some("text/plain"), "debug-log 1");
    assert_eq!(debug.status, 200, "{}", debug.body);
    assert!(host.stop_in_place().success());
    let log = host.drain_log();
    let written = log.iter().filter(|l| l.contains("flood")).count();
    assert_eq!(written, 1, "the debug entry is written: {log:#?}");
}

#[test]
fn log_and_state_floods_are_bounded_and_cannot_forge_log_lines() {
    let ws = workspace("");
    let mut host = Host::start(&ws.config(), &[]);
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    // 200 entries of ~66 KB, each full of newlines and forged lines.
    let flood = host.post("hostile", Some("text/plain"), "log 200");
    assert_eq!(flood.status, 200, "{}", flood.body);
    // 60 KB values under new keys: the plant's quota (50 keys here) stops them.
    let state = host.post("hostile", Some("text/plain"), "state 100");
    assert_eq!(state.status, 422, "{}", state.body);
    assert!(
        state.json()["detail"]
            .as_str()
            .unwrap()
            .contains("plant plant-a's state is full"),
        "{}",
        state.body
    );
    assert_served("log and state floods", &baseline, &during.finish());
    assert!(host.stop_in_place().success());
    let log = host.drain_log();
    let plugin_lines: Vec<&String> = log.iter().filter(|l| l.contains("flood")).collect();
    let bytes: usize = plugin_lines.iter().map(|l| l.len()).sum();
    println!(
        "log flood: {} lines, {bytes} bytes written of {} asked",
        plugin_lines.len(),
        200 * 66_000
    );
    // The burst (128 KiB) and a few seconds at 64 KiB/s at most, entries cut to 2 KiB.
    assert!(bytes < 1 << 20, "{bytes} bytes of plugin log");
    assert!(plugin_lines.iter().all(|l| l.len() < 2400));
    assert!(
        !log.iter().any(|l| l.starts_with("2026-12-01T00:00:00Z")),
        "a forged line reached the log"
    );
    assert!(log.iter().any(|l| l.contains("plugin log entries dropped")));
}

#[test]
fn oversized_components_and_compilations_past_their_budget_are_refused() {
    // Its hosts compile in their own data directories' caches, not the test run's shared one
    // (`MILLRACE_COMPILE_CACHE` empty): a component another test compiled would be taken from
    // there instead of being compiled within the budget.
    // A plant that grants what the Python components import; the host's compilation budget is
    // small enough that compiling CPython (≈400 MB, ≈5 s here) does not fit.
    let python = route_toml(
        "py",
        &plugin("canonical-map-py"),
        r#"["config", "lookup", "wasi"]"#,
        "memory_mib = 128\nsettings = { codes = [{ path = \"data.work_centre\", table = \"work_centres\" }] }",
    );
    let memory = workspace(&python);
    let config = std::fs::read_to_string(memory.config()).unwrap().replace(
        "[host]\n",
        "[host]\ncompile_memory_mib = 128\nmax_component_mib = 20\n",
    ) + "\n[plants.plant-a.lookups.work_centres]\nentries = { WC01 = \"ASSY-01\" }\n";
    memory.write("millrace.toml", &config);
    let host = Host::start(&memory.config(), &[("MILLRACE_COMPILE_CACHE", "")]);
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    let upload = |bytes: &[u8]| host.admin("POST", "/v1/plants/plant-a/plugins", bytes);
    // Over the size cap: refused, and the client (which, like most, sends its whole body
    // before reading the answer) gets the 413 rather than a connection reset under it: twice
    // the cap, far more than the socket's buffers hold.
    let big = upload(&vec![0u8; 40 << 20]);
    assert_eq!(big.status, 413, "{}", big.body);
    assert!(big.body.contains("at most 20 MiB"), "{}", big.body);
    // Without credentials: refused before its body is read, and the client still sees the 401.
    let anonymous = request(
        host.admin.as_deref().expect("host.admin is set"),
        "POST",
        "/v1/plants/plant-a/plugins",
        Some("application/wasm"),
        &[],
        &vec![0u8; 40 << 20],
    );
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    // Another Python component (same imports): its compilation runs out of memory in the
    // child process; the host is not touched.
    let probe = std::fs::read(guest("guest-wasi-probe")).unwrap();
    let refused = upload(&probe);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("needed more than 128 MiB"),
        "{}",
        refused.body
    );
    // Small files whose instances would cost far more than their bytes: nested components
    // instantiating each other twice per level (2.4 KB, 8 million instances: 1.2 GB of the
    // host's memory when it loaded them), a million globals: refused unread.
    let mut doubling = "(component)".to_string();
    for _ in 0..23 {
        doubling =
            format!("(component {doubling} (instance (instantiate 0)) (instance (instantiate 0)))");
    }
    let refused = upload(&wat::parse_str(&doubling).unwrap());
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("more than 1024 instances"),
        "{}",
        refused.body
    );
    let globals = format!(
        "(component (core module {}))",
        "(global i32 (i32.const 0))".repeat(1_000_000)
    );
    let refused = upload(&wat::parse_str(&globals).unwrap());
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("globals; at most 10000"),
        "{}",
        refused.body
    );
    assert_served(
        "a compilation past its memory budget",
        &baseline,
        &during.finish(),
    );
    drop(host);

    // The same candidate against a budget of 1 s of compilation.
    let config = std::fs::read_to_string(memory.config())
        .unwrap()
        .replace("compile_memory_mib = 128", "compile_timeout_s = 1");
    memory.write("millrace.toml", &config);
    let host = Host::start(&memory.config(), &[("MILLRACE_COMPILE_CACHE", "")]);
    let refused = host.admin("POST", "/v1/plants/plant-a/plugins", &probe);
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(
        refused.body.contains("compile_timeout_s") || refused.body.contains("of CPU"),
        "{}",
        refused.body
    );
}

#[test]
fn a_version_that_keeps_trapping_is_quarantined_then_lifted_or_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = WatPlugin::default().write(dir.path(), "v1.wasm");
    let trap = route_toml("trap", &guest("guest-act"), r#"["log", "state"]"#, "");
    let ws = workspace(&(route_toml("wat", &v1, "[]", "") + "\n" + &trap));
    let config = std::fs::read_to_string(ws.config())
        .unwrap()
        .replace("quarantine_after = 0", "quarantine_after = 3");
    ws.write("millrace.toml", &config);
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    // Pause (the default): three traps, then the version's messages are held (503), not run.
    for _ in 0..3 {
        assert_eq!(host.post("trap", Some("text/plain"), "trap").status, 502);
    }
    let held = host.post("trap", Some("text/plain"), "ok");
    assert_eq!(held.status, 503, "{}", held.body);
    assert_eq!(held.kind(), "plugin-quarantined");
    assert_eq!(held.header("retry-after"), Some("30"));
    let listed = host.admin("GET", "/v1/quarantine", b"").json();
    assert_eq!(listed[0]["plugin"], "guest-act", "{listed}");
    assert_eq!(listed[0]["plant"], "plant-a");
    assert_eq!(listed[0]["failures"], 3);
    // Other plugins of the plant are not affected; an operator lifts it.
    assert_eq!(host.post("wat", Some("text/plain"), "go").status, 200);
    let lifted = host.admin(
        "POST",
        "/v1/plants/plant-a/plugins/guest-act/quarantine/reset",
        b"",
    );
    assert_eq!(lifted.status, 200, "{}", lifted.body);
    assert_eq!(host.post("trap", Some("text/plain"), "ok").status, 200);
    assert_served("a quarantined version", &baseline, &during.finish());
    drop(host);

    // Rollback: a trapping version 2 is quarantined and the plant goes back to version 1.
    ws.write(
        "millrace.toml",
        &config.replace(
            "quarantine_after = 3",
            "quarantine_after = 2\nquarantine_action = \"rollback\"",
        ),
    );
    let host = ws.start();
    let v2 = WatPlugin {
        version: "2.0.0",
        mediate_traps: true,
        ..WatPlugin::default()
    };
    assert_eq!(
        host.admin("POST", "/v1/plants/plant-a/plugins", &v2.component())
            .status,
        201
    );
    let activated = host.admin(
        "POST",
        "/v1/plants/plant-a/plugins/wat-plugin/activate",
        br#"{"version": "2.0.0"}"#,
    );
    assert_eq!(activated.status, 200, "{}", activated.body);
    for _ in 0..2 {
        assert_eq!(host.post("wat", Some("text/plain"), "go").status, 502);
    }
    // A guard against a rollback that never comes, not a timing assertion.
    let mut lineage = String::new();
    for _ in 0..200 {
        let reply = host.post("wat", Some("text/plain"), "go");
        if reply.status == 200 {
            lineage = reply.header("millrace-lineage").unwrap().to_string();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lineage.starts_with("wat-plugin@1.0.0+"), "{lineage}");
    let history = host
        .admin("GET", "/v1/plants/plant-a/plugins/wat-plugin", b"")
        .json();
    let last = history["history"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "rollback", "{history}");
    assert_eq!(last["by"], "quarantine", "{history}");
}

/// A quarantine that trips for a version no longer running (its last message was still in
/// flight when an operator activated another) rolls nothing back: it would bring the
/// quarantined version back.
#[test]
fn a_quarantine_of_a_version_replaced_meanwhile_rolls_nothing_back() {
    let dir = tempfile::tempdir().unwrap();
    let v1 = WatPlugin::default().write(dir.path(), "v1.wasm");
    // Long enough for the activation below to come while the second message still runs.
    let ws = workspace(&route_toml("wat", &v1, "[]", "deadline_ms = 5000"));
    let config = std::fs::read_to_string(ws.config()).unwrap().replace(
        "quarantine_after = 0",
        "quarantine_after = 2\nquarantine_action = \"rollback\"",
    );
    ws.write("millrace.toml", &config);
    let mut host = ws.start();
    let spins = WatPlugin {
        version: "2.0.0",
        mediate_spins: true,
        ..WatPlugin::default()
    };
    let v3 = WatPlugin {
        version: "3.0.0",
        ..WatPlugin::default()
    };
    for component in [spins.component(), v3.component()] {
        let kept = host.admin("POST", "/v1/plants/plant-a/plugins", &component);
        assert_eq!(kept.status, 201, "{}", kept.body);
    }
    let activate = |version: &str| {
        let body = format!(r#"{{"version": "{version}"}}"#);
        let reply = host.admin(
            "POST",
            "/v1/plants/plant-a/plugins/wat-plugin/activate",
            body.as_bytes(),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    };
    activate("2.0.0");
    // One failure (the deadline), then a second message held in 2.0.0's loop...
    assert_ne!(host.post("wat", Some("text/plain"), "go").status, 200);
    let url = host.url.clone();
    let second = std::thread::spawn(move || {
        request(
            &url,
            "POST",
            "/v1/routes/wat/messages",
            Some("text/plain"),
            &[],
            b"go",
        )
        .status
    });
    let on_2 = [("route", "wat"), ("version", "2.0.0")];
    crate::hot_reload::eventually("the second message runs on 2.0.0", || {
        let text = host.admin("GET", "/metrics", b"").body;
        (crate::metrics::value(&text, "processor_received", &on_2) >= 2.0).then_some(())
    });
    // ...while 3.0.0 is activated: its failure trips 2.0.0's quarantine after the change.
    activate("3.0.0");
    assert_ne!(second.join().unwrap(), 200);
    let outcome = host.wait_for_log_where(
        |l| l.contains("quarantined version") && l.contains("rolled back"),
        "the quarantine's outcome",
    );
    assert!(
        outcome.contains("a quarantined version no longer running; nothing rolled back"),
        "{outcome}"
    );
    let doc = host
        .admin("GET", "/v1/plants/plant-a/plugins/wat-plugin", b"")
        .json();
    assert_eq!(doc["active"]["version"], "3.0.0", "{doc}");
    let last = doc["history"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["version"], "3.0.0", "{doc}");
    assert_eq!(last["action"], "activate", "{doc}");
    let served = host.post("wat", Some("text/plain"), "go");
    assert_eq!(served.status, 200, "{}", served.body);
    assert!(
        served
            .header("millrace-lineage")
            .is_some_and(|l| l.starts_with("wat-plugin@3.0.0+")),
        "{:?}",
        served.header("millrace-lineage")
    );
}

#[test]
fn the_drop_folder_takes_only_regular_files_of_the_hosts_user_within_the_size_cap() {
    let dir = tempfile::tempdir().unwrap();
    let plain = WatPlugin::default().write(dir.path(), "plain.wasm");
    let ws = workspace(&route_toml("wat", &plain, "[]", ""));
    let config = std::fs::read_to_string(ws.config()).unwrap().replace(
        "[host]\n",
        "[host]\ndrop_settle_ms = 200\nmax_component_mib = 4\n",
    );
    ws.write("millrace.toml", &config);
    let host = ws.start();
    let baseline = Bystander::baseline(&host.url, Duration::from_secs(1));
    let during = Bystander::start(&host.url);
    let plant = ws.dir.path().join(".millrace/drop/plant-a");
    // A secret the host's user can read, and a link to it named like a candidate.
    let secret = dir.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET-CONTENT").unwrap();
    std::os::unix::fs::symlink(&secret, plant.join("link.wasm")).unwrap();
    // A FIFO (reading it would block forever), a file others may write, a 3 GB sparse file.
    let fifo = plant.join("fifo.wasm");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let shared = plant.join("shared.wasm");
    std::fs::write(&shared, WatPlugin::default().component()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o666)).unwrap();
    let huge = plant.join("huge.wasm");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(3 << 30)
        .unwrap();
    let rss_before = rss_mib(host.pid());
    let reason = |name: &str| {
        crate::hot_reload::eventually(&format!("{name} refused"), || {
            std::fs::read_to_string(plant.join(format!("refused/{name}.reason"))).ok()
        })
    };
    let link = reason("link.wasm");
    assert!(link.contains("is a symbolic link"), "{link}");
    let fifo_reason = reason("fifo.wasm");
    assert!(fifo_reason.contains("not a regular file"), "{fifo_reason}");
    let shared_reason = reason("shared.wasm");
    assert!(
        shared_reason.contains("writable by others"),
        "{shared_reason}"
    );
    let huge_reason = reason("huge.wasm");
    assert!(huge_reason.contains("at most 4 MiB"), "{huge_reason}");
    let refusals = host.admin("GET", "/v1/refusals", b"").body;
    assert!(!refusals.contains("TOP-SECRET"), "{refusals}");
    assert!(refusals.contains("\"digest\":\"unread\""), "{refusals}");
    let rss_after = rss_mib(host.pid());
    println!("drop attacks: host RSS {rss_before} → {rss_after} MiB");
    assert!(
        rss_after < rss_before + 256,
        "{rss_before} → {rss_after} MiB"
    );
    assert_served("drop-folder attacks", &baseline, &during.finish());
    // The secret was neither read into a reason nor moved.
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "TOP-SECRET-CONTENT"
    );
}
