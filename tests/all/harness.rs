//! Starting and stopping real hosts, sending real HTTP, locating built components.

use crate::ports::server_port;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

fn component(dir: &str, name: &str) -> PathBuf {
    let path = root().join("target").join(dir).join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the components with scripts/build-plugins first",
        path.display()
    );
    path
}

/// A plugin of `plugins/`, built.
pub fn plugin(name: &str) -> PathBuf {
    component("plugins", name)
}

/// A test guest of `tests/guests/`, built.
pub fn guest(name: &str) -> PathBuf {
    component("test-guests", name)
}

/// Whether expected files are to be rewritten from the current output (`MILLRACE_BLESS`). Refused
/// when `CI` is set: in CI a comparison must compare, never pass by rewriting its expectation.
pub fn blessing() -> bool {
    let bless = std::env::var_os("MILLRACE_BLESS").is_some();
    assert!(
        !(bless && std::env::var_os("CI").is_some()),
        "MILLRACE_BLESS is refused when CI is set: bless locally and commit the changed files"
    );
    bless
}

/// The `millrace` binary under test.
pub fn millrace() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_millrace"));
    cmd.env_remove("RUST_LOG")
        .env("MILLRACE_COMPILE_CACHE", shared_compile_cache());
    cmd
}

/// The compile cache the hosts and commands of this test process share
/// (`$MILLRACE_COMPILE_CACHE`): each component is compiled once per test run instead of once per
/// host, as a machine's hosts would share one. A test of the cache itself removes the variable.
/// `target/test-compile-cache/run-PID`; when the first test asks for it, the folders of test
/// processes no longer running are removed, and one of this PID left by an earlier run (PIDs
/// repeat in containers): every run starts with an empty cache.
pub fn shared_compile_cache() -> &'static Path {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let parent = root().join("target/test-compile-cache");
        let own = std::process::id().to_string();
        if let Ok(entries) = std::fs::read_dir(&parent) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let pid = name.to_str().and_then(|n| n.strip_prefix("run-"));
                if pid.is_some_and(|pid| pid == own || !Path::new("/proc").join(pid).exists()) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        let dir = parent.join(format!("run-{own}"));
        std::fs::create_dir_all(&dir).expect("make the shared compile cache");
        dir
    })
}

/// Run `millrace ARGS` in `dir` to completion (admin commands carry the test operator's token).
pub fn run_in(dir: &Path, args: &[&str]) -> Output {
    run_in_with_cache(dir, Some(shared_compile_cache()), args)
}

/// [`run_in`] with `$MILLRACE_COMPILE_CACHE` set to `cache`, or unset (then the configuration's
/// or data directory's cache; none for `plugin test`) instead of the test run's shared one.
pub fn run_in_with_cache(dir: &Path, cache: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = millrace();
    cmd.env_remove("MILLRACE_COMPILE_CACHE");
    if let Some(cache) = cache {
        cmd.env("MILLRACE_COMPILE_CACHE", cache);
    }
    cmd.current_dir(dir)
        .args(args)
        .env("MILLRACE_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
        .output()
        .expect("millrace runs")
}

/// The admin token every test workspace with an admin API accepts (an operator of every plant,
/// named `test-operator`).
pub const TEST_ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// The `[[admin.tokens]]` entry for [`TEST_ADMIN_TOKEN`].
pub fn test_admin_tokens() -> String {
    use sha2::Digest;
    format!(
        "\n[[admin.tokens]]\nname = \"test-operator\"\nsha256 = \"{}\"\nrole = \"operator\"\n",
        hex::encode(sha2::Sha256::digest(TEST_ADMIN_TOKEN.as_bytes()))
    )
}

/// A configuration in a fresh temporary directory (its data directory is in there too).
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    /// A workspace with `config`; a configuration with an admin API and no `[admin]` of its own
    /// gets the test operator's token ([`TEST_ADMIN_TOKEN`]).
    pub fn new(config: &str) -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = if config.contains("\nadmin = ") && !config.contains("[admin") {
            format!("{config}\n{}", test_admin_tokens())
        } else {
            config.to_string()
        };
        std::fs::write(dir.path().join("millrace.toml"), config).expect("write config");
        Workspace { dir }
    }

    pub fn config(&self) -> PathBuf {
        self.dir.path().join("millrace.toml")
    }

    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.dir.path().join(name), text).expect("write file");
    }

    pub fn start(&self) -> Host {
        Host::start(&self.config(), &[])
    }

    pub fn millrace(&self, args: &[&str]) -> Output {
        run_in(self.dir.path(), args)
    }
}

/// A running `millrace run` on an ephemeral port.
pub struct Host {
    child: Option<Child>,
    pub url: String,
    /// The admin API, when the configuration sets `host.admin`.
    pub admin: Option<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
    /// Lines before this index were passed by an earlier [`Host::wait_for_log`].
    log_cursor: usize,
}

/// Longest a test waits for a host to exit, an HTTP answer or an awaited log line: a guard that
/// turns a hung host into a failed test instead of a hung CI run, never a timing assertion.
pub const GUARD: Duration = Duration::from_secs(180);

/// One HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: String,
    /// Every response header, names lower-case.
    pub headers: Vec<(String, String)>,
}

impl Reply {
    /// The problem type of an error answer without its `urn:millrace:problem:` prefix.
    pub fn kind(&self) -> String {
        self.json()["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("urn:millrace:problem:")
            .to_string()
    }

    /// The first header of that (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Host {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Host {
        Host::start_with(config, env, &[])
    }

    /// [`Host::start`] with more arguments to `millrace run`.
    pub fn start_with(config: &Path, env: &[(&str, &str)], args: &[&str]) -> Host {
        let mut cmd = millrace();
        cmd.args(["run", "--config"])
            .arg(config)
            .args(["--http", "127.0.0.1:0"])
            .args(args);
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("millrace run starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let (err_tx, err_rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_tx.send(line);
            }
        });
        // A guard against a hung start, not a timing assertion.
        let mut admin = None;
        let url = loop {
            match line_rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("millrace: admin on ") {
                        admin = Some(url.to_string());
                    }
                    if let Some(url) = line.strip_prefix("millrace: listening on ") {
                        break url.to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log: Vec<String> = err_rx.try_iter().collect();
                    panic!("millrace run did not start:\n{}", log.join("\n"));
                }
            }
        };
        Host {
            child: Some(child),
            url,
            admin,
            stderr: err_rx,
            log: Vec::new(),
            log_cursor: 0,
        }
    }

    pub fn post(&self, route: &str, content_type: Option<&str>, body: impl AsRef<[u8]>) -> Reply {
        self.request(
            "POST",
            &format!("/v1/routes/{route}/messages"),
            content_type,
            &[],
            body.as_ref(),
        )
    }

    pub fn post_with_key(
        &self,
        route: &str,
        content_type: &str,
        key: &str,
        body: impl AsRef<[u8]>,
    ) -> Reply {
        self.request(
            "POST",
            &format!("/v1/routes/{route}/messages"),
            Some(content_type),
            &[("idempotency-key", key)],
            body.as_ref(),
        )
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        request(&self.url, method, path, content_type, headers, body)
    }

    /// Wait for the next log line containing `needle`, after the line an earlier wait matched
    /// (so a line from before the awaited event is never taken for it); returns it.
    pub fn wait_for_log(&mut self, needle: &str) -> String {
        self.wait_for_log_where(|line| line.contains(needle), needle)
    }

    /// Wait for the next log line (after the one an earlier wait matched) for which `matches`
    /// holds; `what` names it in the failure.
    pub fn wait_for_log_where(&mut self, matches: impl Fn(&str) -> bool, what: &str) -> String {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(found) = self.log[self.log_cursor..].iter().position(|l| matches(l)) {
                self.log_cursor += found + 1;
                return self.log[self.log_cursor - 1].clone();
            }
            self.log_cursor = self.log.len();
            self.next_log_line(deadline, &format!("no log line with {what:?}"));
        }
    }

    /// Wait until `deadline` for the host's next log line and keep it; past it, fail with
    /// `failure` and the log so far.
    fn next_log_line(&mut self, deadline: std::time::Instant, failure: &str) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match self.stderr.recv_timeout(left) {
            Ok(line) => self.log.push(line),
            Err(_) => panic!("{failure}; the log so far:\n{}", self.log.join("\n")),
        }
    }

    /// Read every log line the host wrote until it exited (after [`Host::stop`] or
    /// [`Host::wait`] the pipe is closed) or, while it runs, every line written so far.
    pub fn drain_log(&mut self) -> Vec<String> {
        self.log.extend(self.stderr.try_iter());
        self.log.clone()
    }

    /// Every log line written so far, once `holds` of them (lines are read from the host's
    /// stderr by another thread, so a line written before an effect the test saw may still be
    /// on its way); `what` names the wait in the failure.
    pub fn log_once(&mut self, holds: impl Fn(&[String]) -> bool, what: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            self.log.extend(self.stderr.try_iter());
            if holds(&self.log) {
                return self.log.clone();
            }
            self.next_log_line(deadline, &format!("the log never showed {what}"));
        }
    }

    /// Every log line read so far.
    pub fn log_so_far(&self) -> Vec<String> {
        self.log.clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// A request to the admin API as the test operator; a body is typed as JSON when it looks
    /// like JSON, else as a component (`application/wasm`).
    pub fn admin(&self, method: &str, path: &str, body: &[u8]) -> Reply {
        admin_request(
            self.admin.as_deref().expect("host.admin is set"),
            method,
            path,
            body,
        )
    }
    /// Wait until `GET /readyz` answers 200 (the broker is connected); the last answer.
    pub fn wait_ready(&self) -> Reply {
        // A guard against a hung host, not a timing assertion.
        let mut last = None;
        for _ in 0..1200 {
            let reply = self.request("GET", "/readyz", None, &[], b"");
            if reply.status == 200 {
                return reply;
            }
            last = Some(reply.body);
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut log = self.log.clone();
        log.extend(self.stderr.try_iter());
        let tail = &log[log.len().saturating_sub(30)..];
        panic!(
            "the host never became ready; last /readyz: {}\nits log's end:\n{}",
            last.unwrap_or_default(),
            tail.join("\n")
        );
    }

    /// SIGKILL: the host dies without finishing anything. Returns its whole log, to the last
    /// line it wrote before it died.
    pub fn kill9(mut self) -> Vec<String> {
        self.signal("KILL");
        self.wait_exit();
        self.log.clone()
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(mut self) -> ExitStatus {
        self.stop_in_place()
    }

    /// [`Host::stop`], keeping the host's log readable afterwards.
    pub fn stop_in_place(&mut self) -> ExitStatus {
        self.signal("TERM");
        self.wait_exit()
    }

    /// Send `signal` (`TERM`, `INT`, `KILL`, `HUP`) to the host.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }

    /// Once `running` messages of `route` are being mediated, send SIGTERM and wait for an exit
    /// 0; the whole log and the index of its `SIGTERM received` line.
    pub fn stop_while_mediating(&mut self, route: &str, running: usize) -> (Vec<String>, usize) {
        for _ in 0..running {
            self.wait_for_log(&format!("mediating route={route}"));
        }
        self.signal("TERM");
        assert!(self.wait_exit().success(), "exit 0 after SIGTERM");
        let log = self.drain_log();
        let signalled = log
            .iter()
            .position(|l| l.contains("SIGTERM received"))
            .expect("the signal is logged");
        (log, signalled)
    }

    /// Wait for the exit (after a signal was sent), keeping the host's log readable afterwards;
    /// a host still running after [`GUARD`] is killed and the test fails.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            if let Some(status) = child.try_wait().expect("wait on millrace") {
                // The pipe is closed now: every line it wrote can be read.
                let reader = std::mem::replace(&mut self.stderr, mpsc::channel().1);
                for line in reader.iter() {
                    self.log.push(line);
                }
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "millrace did not exit within {GUARD:?}; its log:\n{}",
                    self.drain_log().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request with a fresh agent that reports every status as a reply; a request
/// unanswered after [`GUARD`] fails the test.
pub fn request(
    base: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    try_request(base, method, path, content_type, headers, body)
        .unwrap_or_else(|e| panic!("{method} {base}{path}: {e}"))
}

/// [`request`], with a transport failure (refused connection, reset, timeout) as an error.
pub fn try_request(
    base: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(GUARD))
        .build()
        .into();
    let url = format!("{base}{path}");
    let mut builder = ureq::http::Request::builder().method(method).uri(&url);
    if let Some(ct) = content_type {
        builder = builder.header("content-type", ct);
    }
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let req = builder.body(body.to_vec()).expect("request builds");
    let mut resp = agent.run(req)?;
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let response_headers = resp
        .headers()
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = String::new();
    resp.body_mut().as_reader().read_to_string(&mut body)?;
    Ok(Reply {
        status,
        content_type,
        body,
        headers: response_headers,
    })
}

/// The value of one counter line of the host's `GET /metrics` (0 when absent).
pub fn counter(host: &Host, line_start: &str) -> u64 {
    let text = host.admin("GET", "/metrics", b"").body;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A config of one HTTP route `name` → one step of `plugin` (a path) with extra step TOML.
pub fn route_toml(name: &str, plugin: &Path, grants: &str, extra: &str) -> String {
    format!(
        "[routes.{name}]\nplant = \"plant-a\"\nsource = \"http\"\nsink = \"reply\"\n\n[[routes.{name}.steps]]\nplugin = \"{}\"\ngrants = {grants}\n{extra}\n",
        plugin.display()
    )
}

/// A route `name` of plant-a (HTTP in, reply out) with one step of the `act` test guest (which
/// does what each message says: `work N`, `count`, `retry MS`, `trap`, `put K V`, `get K`).
pub fn act_route(name: &str, extra: &str) -> String {
    route_toml(name, &guest("guest-act"), r#"["log", "state"]"#, extra)
}

/// A message for the `act` guest that keeps its call busy for a while and then finishes: long
/// enough that a test can act while it runs (seconds here), far inside the deadline and budget of [`slow_act_route`]. How
/// long it takes is never asserted; tests that need it still running check the log's order.
pub const SLOW_WORK: &str = "work 3000000000";

/// A step deadline for slow `act` messages: the slow work finishes well inside it.
const ACT_DEADLINE: &str = "deadline_ms = 120000";

/// [`act_route`] for [`SLOW_WORK`]: a step deadline and a message budget it finishes well
/// inside, however loaded the machine (the default budget, 10 s, is not).
pub fn slow_act_route(name: &str) -> String {
    act_route(name, ACT_DEADLINE).replacen(
        "plant = \"plant-a\"\n",
        "plant = \"plant-a\"\nmessage_budget_ms = 120000\n",
        1,
    )
}

/// Whether a host's log `line` says message `id` of `route` was mediated (a source's `mediated`
/// line, at debug level).
pub fn says_mediated(line: &str, route: &str, id: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (route, id) = (format!("route={route}"), format!("message_id={id}"));
    ["mediated", &route, &id].iter().all(|w| words.contains(w))
}

/// The index of the first line of `log` that [`says_mediated`] `id` of `route`.
pub fn mediated_at(log: &[String], route: &str, id: &str) -> Option<usize> {
    log.iter().position(|l| says_mediated(l, route, id))
}

/// The quickstart's mes-fixed-width step settings, as TOML lines.
pub fn mes_settings(route: &str) -> String {
    let text = std::fs::read_to_string(root().join("examples/quickstart/millrace.toml"))
        .expect("quickstart config");
    let start = text
        .find("[routes.mes-confirmations.steps.settings]")
        .expect("settings table");
    text[start..].replace("mes-confirmations", route)
}

/// An 80-column quickstart record.
pub fn record(work_order: &str, quantity: &str, work_centre: &str) -> String {
    let r = format!(
        "PC{work_order:<12}{:<18}{quantity:>10}{:<3}{work_centre:<6}{:<14}{:<8}A      ",
        "MAT-4711", "EA", "20261127063000", "OP17"
    );
    assert_eq!(r.len(), 80);
    r
}

/// One request a [`WebhookReceiver`] took.
#[derive(Debug, Clone)]
pub struct Received {
    /// The status it was answered with.
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The body's bytes as they came.
    pub raw: Vec<u8>,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A real HTTP/1.1 server on loopback standing in for a downstream system: it records every
/// request and answers each with the status set by [`WebhookReceiver::answer_with`].
pub struct WebhookReceiver {
    pub url: String,
    received: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
    /// Requests still to be refused (with `refusal`) before `status` applies again.
    refusals: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    refusal: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

impl WebhookReceiver {
    pub fn start() -> WebhookReceiver {
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::{Arc, Mutex};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        let url = format!("http://{}/events", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let refusals = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let refusal = Arc::new(AtomicU16::new(503));
        let (rec, st) = (Arc::clone(&received), Arc::clone(&status));
        let (left, refused_with) = (Arc::clone(&refusals), Arc::clone(&refusal));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (rec, st) = (Arc::clone(&rec), Arc::clone(&st));
                let (left, refused_with) = (Arc::clone(&left), Arc::clone(&refused_with));
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
                    let mut writer = stream;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = Vec::new();
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).expect("header line");
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            if let Some((n, v)) = h.split_once(':') {
                                headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
                            }
                        }
                        let len = headers
                            .iter()
                            .find(|(n, _)| n == "content-length")
                            .and_then(|(_, v)| v.parse::<usize>().ok())
                            .unwrap_or(0);
                        let mut body = vec![0; len];
                        reader.read_exact(&mut body).expect("body");
                        let refuse = left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let code = if refuse {
                            refused_with.load(Ordering::SeqCst)
                        } else {
                            st.load(Ordering::SeqCst)
                        };
                        rec.lock().unwrap().push(Received {
                            status: code,
                            headers,
                            body: String::from_utf8_lossy(&body).into_owned(),
                            raw: body,
                        });
                        let answer = format!("HTTP/1.1 {code} X\r\ncontent-length: 0\r\n\r\n");
                        if std::io::Write::write_all(&mut writer, answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        WebhookReceiver {
            url,
            received,
            status,
            refusals,
            refusal,
        }
    }

    /// Answer the next `n` requests with `status`, then as before.
    pub fn refuse_next(&self, n: usize, status: u16) {
        use std::sync::atomic::Ordering;
        self.refusal.store(status, Ordering::SeqCst);
        self.refusals.store(n, Ordering::SeqCst);
    }

    /// Answer every later request with `status` (200 takes it; others refuse it).
    pub fn answer_with(&self, status: u16) {
        self.status
            .store(status, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every request answered 200 (taken) so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// Every request so far, taken or refused, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A real RabbitMQ node on loopback (`scripts/rabbitmq`): a node of a test's own, stopped when
/// dropped ([`Broker::start`]), or a virtual host of a test's own on the node the tests of this
/// process share ([`Broker::shared`]).
pub struct Broker {
    pub port: u16,
    /// AMQP over TLS ([`Broker::start_tls`]).
    pub tls_port: Option<u16>,
    tls_dir: Option<PathBuf>,
    /// The Erlang cookie of a node meant for a cluster ([`Cluster`]).
    cookie: Option<String>,
    pid: u32,
    /// The node's data and logs.
    dir: PathBuf,
    held: Held,
}

/// What a [`Broker`] handle holds.
enum Held {
    /// A node of its own: its directory, removed when the handle is dropped.
    Node(tempfile::TempDir),
    /// A virtual host of the shared node.
    Vhost(String),
}

/// The node [`Broker::shared`] hands out virtual hosts of: `test-0` … `test-{SHARED_VHOSTS - 1}`,
/// made when it starts (one `rabbitmqctl` run, ~0.7 s of CPU, instead of one per test).
struct SharedNode {
    port: u16,
    pid: u32,
    dir: PathBuf,
    next: std::sync::atomic::AtomicUsize,
}

/// More than the tests that share the node.
const SHARED_VHOSTS: usize = 64;

impl SharedNode {
    /// The node started, or why it was not: a node that failed to start is not started again
    /// by every test that would share it.
    fn start() -> Result<SharedNode, String> {
        std::panic::catch_unwind(SharedNode::start_node).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    }

    fn start_node() -> SharedNode {
        let (dir, port, _, pid) = Broker::launch_afresh(None, None);
        let dir = dir.keep();
        // Stopped (killed if it has not stopped 60 s after SIGTERM), and its directory removed
        // unless a failing test marked it kept, once this test process has exited, however it
        // ends (no destructor runs for a static): by a watcher in a session of its own that the
        // shell starting it leaves behind.
        let watcher = format!(
            "gone() {{ ! kill -0 $1 2>/dev/null || grep -q '^State:[[:space:]]*Z' /proc/$1/status; }}; \
             until gone {test}; do sleep 1; done; kill -TERM {pid}; \
             for _ in $(seq 60); do gone {pid} && break; sleep 1; done; kill -KILL {pid} 2>/dev/null; \
             [ -e '{dir}/keep' ] || rm -rf '{dir}'",
            test = std::process::id(),
            dir = dir.display()
        );
        let started = Command::new("bash")
            .args([
                "-c",
                "setsid bash -c \"$1\" </dev/null >/dev/null 2>&1 &",
                "bash",
            ])
            .arg(watcher)
            .status()
            .expect("bash runs");
        assert!(started.success(), "the shared node's watcher did not start");
        rabbitmqctl(
            &dir,
            port,
            &[
                "eval",
                &format!(
                    "[begin V = list_to_binary(\"test-\" ++ integer_to_list(N)), \
                     rabbit_vhost:add(V, <<\"millrace-tests\">>), \
                     ok = rabbit_auth_backend_internal:set_permissions(<<\"guest\">>, V, \
                     <<\".*\">>, <<\".*\">>, <<\".*\">>, <<\"millrace-tests\">>) \
                     end || N <- lists:seq(0, {})].",
                    SHARED_VHOSTS - 1
                ),
            ],
        );
        SharedNode {
            port,
            pid,
            dir,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }
}

impl Broker {
    pub fn start() -> Broker {
        Broker::start_with(None)
    }

    /// A virtual host of this test's own on one node the tests of this process share: starting
    /// a node costs ~6 s of CPU. For a test that neither stops, kills, freezes nor reconfigures
    /// its node, nor loads it more than a few thousand messages (those start their own): what a
    /// test declares and consumes lives in its virtual host (`url` and `client` connect to it,
    /// `ctl` adds `-p VHOST`), so it sees only its own queues, exchanges and connections. The node
    /// stops once the process has exited.
    pub fn shared() -> Broker {
        static NODE: std::sync::OnceLock<Result<SharedNode, String>> = std::sync::OnceLock::new();
        let node = match NODE.get_or_init(SharedNode::start) {
            Ok(node) => node,
            Err(e) => panic!("the shared broker node did not start: {e}"),
        };
        let n = node.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            n < SHARED_VHOSTS,
            "more tests share the broker node than SHARED_VHOSTS"
        );
        Broker {
            port: node.port,
            tls_port: None,
            tls_dir: None,
            cookie: None,
            pid: node.pid,
            dir: node.dir.clone(),
            held: Held::Vhost(format!("test-{n}")),
        }
    }

    /// A node that also takes AMQP over TLS, with `certs`/{ca.pem,broker.pem,broker.key}: clients
    /// need a certificate of that CA, and may log in with it (SASL EXTERNAL, the user named by
    /// its common name).
    pub fn start_tls(certs: &Path) -> Broker {
        Broker::start_with(Some(certs.to_path_buf()))
    }

    fn start_with(tls_dir: Option<PathBuf>) -> Broker {
        Broker::start_node(tls_dir, None)
    }

    fn start_node(tls_dir: Option<PathBuf>, cookie: Option<String>) -> Broker {
        let (dir, port, tls_port, pid) =
            Broker::launch_afresh(tls_dir.as_deref(), cookie.as_deref());
        Broker {
            port,
            tls_port,
            tls_dir,
            cookie,
            pid,
            dir: dir.path().to_path_buf(),
            held: Held::Node(dir),
        }
    }

    /// A node started on fresh ports with a fresh directory: the directory, AMQP port, TLS
    /// port and the node's pid.
    fn launch_afresh(
        tls_dir: Option<&Path>,
        cookie: Option<&str>,
    ) -> (tempfile::TempDir, u16, Option<u16>, u32) {
        // A port can still be taken by another program between the probe and the node's bind:
        // the node then stops and is started again, afresh, on other ports (three starts at most).
        let mut starts = 0;
        loop {
            starts += 1;
            let dir = tempfile::tempdir().expect("broker dir");
            let port = server_port();
            let tls_port = tls_dir.map(|_| server_port());
            let tls = tls_port.zip(tls_dir.map(Path::to_path_buf));
            match Broker::launch(dir.path(), port, tls.as_ref(), cookie) {
                Ok(pid) => return (dir, port, tls_port, pid),
                Err(e) if starts < 3 && e.contains("a port of the node was taken") => {
                    eprintln!("a port of broker {port} was taken; starting on others: {e}");
                }
                Err(e) => panic!("broker did not start: {e}"),
            }
        }
    }

    /// The virtual host the handle stands for: `/` for a node of its own.
    fn vhost(&self) -> &str {
        match &self.held {
            Held::Node(_) => "/",
            Held::Vhost(name) => name,
        }
    }

    /// A node of the handle's own, for what stops, freezes or reconfigures it.
    fn own_node(&self) -> u32 {
        assert!(
            matches!(self.held, Held::Node(_)),
            "a test that stops, kills, freezes or reconfigures its broker starts its own (Broker::start)"
        );
        self.pid
    }

    fn launch(
        dir: &Path,
        port: u16,
        tls: Option<&(u16, PathBuf)>,
        cookie: Option<&str>,
    ) -> Result<u32, String> {
        let mut args = vec![
            "start".to_string(),
            dir.display().to_string(),
            port.to_string(),
        ];
        if let Some((tls_port, certs)) = tls {
            args.extend([tls_port.to_string(), certs.display().to_string()]);
        }
        let mut script = Command::new(root().join("scripts/rabbitmq"));
        if let Some(cookie) = cookie {
            script.env("MILLRACE_ERLANG_COOKIE", cookie);
        }
        let out = script.args(&args).output().expect("scripts/rabbitmq runs");
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the broker's pid"))
    }

    /// SIGKILL the node (a crash: nothing flushed beyond what it already made durable).
    pub fn kill9(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", &self.own_node().to_string()])
            .status();
        self.wait_gone();
    }

    /// SIGTERM the node and wait until it is gone.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.own_node().to_string()])
            .status();
        self.wait_gone();
    }

    fn wait_gone(&self) {
        // A guard against a hung node, not a timing assertion.
        for _ in 0..600 {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("broker {} did not exit", self.pid);
    }

    /// Start the node again on the same data and port (after `kill9` or `stop`).
    pub fn restart(&mut self) {
        self.own_node();
        let tls = self.tls_port.zip(self.tls_dir.clone());
        self.pid = Broker::launch(&self.dir, self.port, tls.as_ref(), self.cookie.as_deref())
            .unwrap_or_else(|e| panic!("broker did not restart: {e}"));
    }

    /// The AMQP URL of the handle's virtual host.
    pub fn url(&self) -> String {
        let vhost = match self.vhost() {
            "/" => "%2f",
            name => name,
        };
        format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", self.port)
    }

    /// The node's process (the Erlang VM), of a node of the test's own.
    pub fn pid(&self) -> u32 {
        self.own_node()
    }

    /// `rabbitmqctl ARGS` against this node (`scripts/rabbitmq ctl`), for the handle's virtual
    /// host (`-p VHOST` added on the shared node); its stdout.
    pub fn ctl(&self, args: &[&str]) -> String {
        match &self.held {
            Held::Node(_) => rabbitmqctl(&self.dir, self.port, args),
            Held::Vhost(vhost) => {
                rabbitmqctl(&self.dir, self.port, &[args, &["-p", vhost]].concat())
            }
        }
    }

    /// Messages in `queue`. RabbitMQ counts only messages ready for delivery, not those a
    /// connected consumer holds unacknowledged: ask after the consumers' hosts have stopped
    /// (their unacknowledged deliveries are then back in the queue) to learn what was never
    /// acknowledged. Fails the test if the broker cannot be asked.
    pub fn depth(&self, queue: &str) -> u64 {
        self.client(&format!(
            "c = pika.BlockingConnection(pika.ConnectionParameters('127.0.0.1', PORT))\nprint(c.channel().queue_declare('{queue}', passive=True).method.message_count)"
        ))
        .as_u64()
        .expect("a message count")
    }

    /// Run a Python program with pika (Debian's python3-pika), a client that is not ours, with
    /// `PORT` set; its stdout parsed as JSON. Its `pika.ConnectionParameters(...)` connect to the
    /// handle's virtual host unless they name one.
    pub fn client(&self, program: &str) -> serde_json::Value {
        let out = Command::new("/usr/bin/python3")
            .arg("-c")
            .arg(format!(
                "import json, os, time, pika\nPORT = int(os.environ['PORT'])\n\
                 _parameters = pika.ConnectionParameters\n\
                 pika.ConnectionParameters = lambda *a, **k: \
                 _parameters(*a, **{{'virtual_host': os.environ['VHOST'], **k}})\n{program}"
            ))
            .env("PORT", self.port.to_string())
            .env("VHOST", self.vhost())
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let dir = match &mut self.held {
            Held::Node(dir) => dir,
            Held::Vhost(vhost) => {
                // A failing test keeps the node's data and logs: its queues stay until the test
                // process exits, the directory after (the node's watcher leaves it).
                if std::thread::panicking() {
                    let _ = std::fs::write(self.dir.join("keep"), vhost.as_bytes());
                    eprintln!(
                        "broker node {} (shared, vhost {vhost}): data and logs kept in {}",
                        self.port,
                        self.dir.display()
                    );
                }
                return;
            }
        };
        // A failing test keeps the node's data and logs (its queues' Raft logs among them) for
        // whoever reads the failure.
        if std::thread::panicking() {
            dir.disable_cleanup(true);
            eprintln!(
                "broker node {}: data and logs kept in {}",
                self.port,
                self.dir.display()
            );
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `rabbitmqctl ARGS` against the node of `dir` and `port` (`scripts/rabbitmq ctl`); its stdout.
fn rabbitmqctl(dir: &Path, port: u16, args: &[&str]) -> String {
    let out = Command::new(root().join("scripts/rabbitmq"))
        .args(["ctl", dir.to_str().unwrap(), &port.to_string()])
        .args(args)
        .output()
        .expect("scripts/rabbitmq runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// CPU time (user + system) process `pid` has used so far, from `/proc` (10 ms resolution).
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start after its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: u64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<u64>().ok()).sum())
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// RabbitMQ nodes on loopback joined in one cluster (`scripts/rabbitmq join`), each a
/// [`Broker`] of its own (port, data, kill and restart); stopped when dropped.
pub struct Cluster {
    pub nodes: Vec<Broker>,
}

impl Cluster {
    pub fn start(size: usize) -> Cluster {
        let cookie = format!("MILLRACETEST{}X{size}", std::process::id());
        let nodes: Vec<Broker> = (0..size)
            .map(|_| Broker::start_node(None, Some(cookie.clone())))
            .collect();
        for node in &nodes[1..] {
            let out = Command::new(root().join("scripts/rabbitmq"))
                .args(["join", &node.dir.display().to_string()])
                .args([node.port.to_string(), nodes[0].port.to_string()])
                .output()
                .expect("scripts/rabbitmq runs");
            assert!(
                out.status.success(),
                "node {} did not join the cluster: {}",
                node.port,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Cluster { nodes }
    }

    /// `host.amqp` of a host that tries node `first` first, then the others in turn.
    pub fn urls_from(&self, first: usize) -> String {
        let urls: Vec<String> = (0..self.nodes.len())
            .map(|i| format!("{:?}", self.nodes[(first + i) % self.nodes.len()].url()))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// Which node leads quorum queue `queue` (of vhost `/`) now, as its Raft members say; asked
    /// of each node in turn until one names a node of the cluster (a node that cannot be asked
    /// fails the test).
    pub fn leader_of(&self, queue: &str) -> usize {
        let ask =
            format!("{{ok, _, {{_, Leader}}}} = ra:members({{'%2F_{queue}', node()}}), Leader.");
        for node in &self.nodes {
            let said = node.ctl(&["eval", &ask]);
            if let Some(i) = self
                .nodes
                .iter()
                .position(|n| said.contains(&format!("millrace-{}@", n.port)))
            {
                return i;
            }
        }
        panic!("no node names the leader of {queue}");
    }
}

/// A workspace with route `mes` (mes-fixed-width, plant-a with its work-centre table) from
/// `source` to MQTT: `host` is the body of `[host]`, `mqtt` the route's MQTT table's keys,
/// `plant` more configuration before the plant's table (e.g. `[plants.plant-a.uns]`).
pub fn mes_to_mqtt(host: &str, source: &str, mqtt: &str, plant: &str) -> Workspace {
    mes_from(
        host,
        source,
        &format!("sink = \"mqtt\"\nmqtt = {{ {mqtt} }}"),
        plant,
    )
}

/// [`mes_to_mqtt`] with any sink: `sink` is the route's lines from `sink = ...` on.
pub fn mes_from(host: &str, source: &str, sink: &str, plant: &str) -> Workspace {
    let mes = plugin("mes-fixed-width");
    let route = route_toml("mes", &mes, r#"["log", "config", "lookup"]"#, "")
        .replace("source = \"http\"", &format!("source = \"{source}\""))
        .replace("sink = \"reply\"", sink);
    Workspace::new(&format!(
        "[host]\n{host}\n\n{plant}[plants.plant-a.lookups.work_centres]\nentries = {{ WC01 = \"ASSY-01\" }}\n\n{route}\n{}",
        mes_settings("mes")
    ))
}

/// A real MQTT broker (mosquitto 2) on loopback for one test (`scripts/mosquitto`), with its
/// sessions and queued messages on disk; stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    /// MQTT over TLS ([`Mosquitto::start_tls`]).
    pub tls_port: Option<u16>,
    pid: u32,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    pub fn start() -> Mosquitto {
        let dir = tempfile::tempdir().expect("mosquitto dir");
        let port = server_port();
        let pid = Mosquitto::launch(dir.path(), &[port.to_string()]);
        Mosquitto {
            port,
            tls_port: None,
            pid,
            _dir: dir,
        }
    }

    /// A broker that also takes MQTT over TLS, with `certs`/{ca.pem,broker.pem,broker.key}:
    /// clients need a certificate of that CA and must log in as `user` with `password`.
    pub fn start_tls(certs: &Path, user: &str, password: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("mosquitto dir");
        let (port, tls_port) = (server_port(), server_port());
        let pid = Mosquitto::launch(
            dir.path(),
            &[
                port.to_string(),
                tls_port.to_string(),
                certs.display().to_string(),
                user.to_string(),
                password.to_string(),
            ],
        );
        Mosquitto {
            port,
            tls_port: Some(tls_port),
            pid,
            _dir: dir,
        }
    }

    fn launch(dir: &Path, args: &[String]) -> u32 {
        let out = Command::new(root().join("scripts/mosquitto"))
            .args(["start", &dir.display().to_string()])
            .args(args)
            .output()
            .expect("scripts/mosquitto runs");
        assert!(
            out.status.success(),
            "mosquitto did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the broker's pid")
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// SIGTERM the broker (it saves its state) and wait until it is gone.
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        // A guard against a hung broker, not a timing assertion.
        for _ in 0..600 {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("mosquitto {} did not exit", self.pid);
    }

    /// Start the broker again on the same data and port (after [`Mosquitto::stop`]).
    pub fn restart(&mut self) {
        self.pid = Mosquitto::launch(self._dir.path(), &[self.port.to_string()]);
    }

    /// A Python program with paho-mqtt (Debian's python3-paho-mqtt), a client that is not
    /// ours, with `PORT` set.
    fn python(&self, program: &str) -> Command {
        let mut command = Command::new("/usr/bin/python3");
        command
            .arg("-c")
            .arg(format!(
                "import json, os, time, threading\nimport paho.mqtt.client as mqtt\nfrom paho.mqtt.properties import Properties\nfrom paho.mqtt.packettypes import PacketTypes\nPORT = int(os.environ['PORT'])\n{program}"
            ))
            .env("PORT", self.port.to_string());
        command
    }

    /// Start `program` (see [`Mosquitto::client`]) in the background.
    pub fn spawn_client(&self, program: &str) -> std::process::Child {
        self.python(program)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("python3 runs")
    }

    /// Run `program` with paho-mqtt to completion; its stdout parsed as JSON.
    pub fn client(&self, program: &str) -> serde_json::Value {
        let out = self.python(program).output().expect("python3 runs");
        assert!(
            out.status.success(),
            "client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client output is not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{}", self.pid)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

/// A certificate authority that issues the host's and clients' certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A certificate and its key, PEM, for `name` (a server: SANs 127.0.0.1 and localhost).
    pub fn issue(&self, name: &str, server: bool) -> (String, String) {
        let sans = if server {
            vec!["127.0.0.1".to_string(), "localhost".to_string()]
        } else {
            Vec::new()
        };
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Copy the folder `from` to `to` (made if missing), leaving out any `.millrace` data folder.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        if name == ".millrace" {
            continue;
        }
        if path.is_dir() {
            copy_dir(&path, &to.join(name));
        } else {
            std::fs::copy(&path, to.join(name)).unwrap();
        }
    }
}

/// A request to the admin API at `base` with the test's token (what [`Host::admin`] sends; this
/// one needs no `Host`, e.g. from another thread). The body's first byte says its type: JSON
/// for `{` or `[`, else a component.
pub fn admin_request(base: &str, method: &str, path: &str, body: &[u8]) -> Reply {
    let content_type = match body.first() {
        None => None,
        Some(b'{' | b'[') => Some("application/json"),
        Some(_) => Some("application/wasm"),
    };
    request(
        base,
        method,
        path,
        content_type,
        &[("authorization", &format!("Bearer {TEST_ADMIN_TOKEN}"))],
        body,
    )
}
