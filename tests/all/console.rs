//! The operator console in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol from the test. After real HTTP traffic (good records and one the plant's lookup
//! refuses), the console — signed in with an admin token — shows the route's counters, the dead
//! letter under its plant and business domain, a dry run of it once the lookup is fixed, then a
//! replay that delivers it once, and the message's lineage with each step; the tabs work from the
//! keyboard, and the page logs no error. A screenshot of each view is written under
//! `target/console-screenshots/`.

use crate::harness::*;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use tungstenite::stream::MaybeTlsStream;

/// Debian's Chromium (`scripts/setup` installs it); `MILLRACE_CHROMIUM` names another.
fn chromium() -> String {
    std::env::var("MILLRACE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// A headless Chromium page, driven over the DevTools protocol.
struct Browser {
    child: Child,
    socket: tungstenite::WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Errors the page reported: exceptions, `console.error`, failed loads.
    errors: Vec<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn launch() -> Browser {
        let program = chromium();
        assert!(
            std::path::Path::new(&program).exists(),
            "{program} is missing: the console test needs Debian's chromium (scripts/setup installs it)"
        );
        let profile = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(&program)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,800",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("chromium starts");
        // It prints its DevTools address on stderr.
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("ws://") {
                    let _ = tx.send(line[at..].trim().to_string());
                }
            }
        });
        let browser_ws = rx.recv_timeout(GUARD).expect("chromium's DevTools address");
        let port = browser_ws
            .trim_start_matches("ws://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let targets = ureq::get(&format!("http://{port}/json/list"))
            .call()
            .expect("DevTools target list")
            .into_body()
            .read_to_string()
            .unwrap();
        let targets: Value = serde_json::from_str(&targets).unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .to_string();
        let (mut socket, _) = tungstenite::connect(page).expect("DevTools page socket");
        if let MaybeTlsStream::Plain(stream) = socket.get_mut() {
            stream.set_read_timeout(Some(GUARD)).unwrap();
        }
        let mut browser = Browser {
            child,
            socket,
            next_id: 0,
            errors: Vec::new(),
            _profile: profile,
        };
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({}));
        }
        // A headless page has no window focus of its own: keys go to the focused element.
        browser.call(
            "Emulation.setFocusEmulationEnabled",
            json!({ "enabled": true }),
        );
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// Call `method`; its result (events read meanwhile are checked for errors).
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(tungstenite::Message::text(request.to_string()))
            .expect("DevTools send");
        loop {
            let message = self.socket.read().expect("DevTools answer");
            let tungstenite::Message::Text(text) = message else {
                continue;
            };
            let doc: Value = serde_json::from_str(text.as_str()).unwrap();
            if doc["id"] == id {
                assert!(doc.get("error").is_none(), "{method}: {doc}");
                return doc["result"].clone();
            }
            self.event(&doc);
        }
    }

    fn event(&mut self, doc: &Value) {
        let params = &doc["params"];
        match doc["method"].as_str() {
            Some("Runtime.exceptionThrown") => self
                .errors
                .push(format!("exception: {}", params["exceptionDetails"])),
            Some("Runtime.consoleAPICalled") if params["type"] == "error" => self
                .errors
                .push(format!("console.error: {}", params["args"])),
            Some("Log.entryAdded") if params["entry"]["level"] == "error" => self
                .errors
                .push(format!("log: {}", params["entry"]["text"])),
            _ => {}
        }
    }

    /// The value of `expression` in the page (promises awaited).
    fn eval(&mut self, expression: &str) -> Value {
        let result = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Wait until `expression` is truthy in the page (a guard, not a timing assertion).
    fn wait_for(&mut self, expression: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.eval(expression);
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > GUARD {
                let text = self.eval("document.body.innerText");
                panic!("never true: {expression}\npage:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url }));
    }

    /// Press a key on the focused element (`text`: what it types, `\r` for Enter).
    fn key(&mut self, key: &str, code: u32, text: &str) {
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyDown", "key": key, "code": key, "windowsVirtualKeyCode": code, "text": text }),
        );
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": key, "windowsVirtualKeyCode": code }),
        );
    }

    /// Write a PNG of the page to `target/console-screenshots/NAME.png`.
    fn screenshot(&mut self, name: &str) {
        use base64::Engine;
        let shot = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        let dir = root().join("target/console-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The workspace's configuration: route `mes` of plant-a, HTTP in, the downstream webhook out,
/// one mes-fixed-width step whose work centres come from `lookups` (TOML inline table).
fn config(webhook: &str, lookups: &str) -> String {
    format!(
        "[host]\nadmin = \"127.0.0.1:0\"\n\n[plants.plant-a.lookups.work_centres]\nentries = {lookups}\n\n\
         [routes.mes]\nplant = \"plant-a\"\nsource = \"http\"\nsink = \"http\"\nwebhook = {{ url = \"{webhook}\" }}\n\n\
         [[routes.mes.steps]]\nplugin = \"{}\"\ngrants = [\"log\", \"config\", \"lookup\"]\n{}",
        plugin("mes-fixed-width").display(),
        mes_settings("mes")
    )
}

/// Wait until the downstream system has taken `n` requests.
fn wait_received(downstream: &WebhookReceiver, n: usize) {
    let started = Instant::now();
    while downstream.requests().len() < n {
        assert!(started.elapsed() < GUARD, "{:?}", downstream.requests());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_console_shows_counters_dead_letters_a_replay_and_lineage_in_a_real_browser() {
    let downstream = WebhookReceiver::start();
    let ws = Workspace::new(&config(&downstream.url, "{ WC01 = \"ASSY-01\" }"));
    let host = ws.start();
    host.wait_ready();
    for order in ["WO-1", "WO-2", "WO-3"] {
        let reply = host.post(
            "mes",
            Some("text/plain"),
            record(order, "0000001000", "WC01"),
        );
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let refused = host.post(
        "mes",
        Some("text/plain"),
        record("WO-4", "0000000500", "WC77"),
    );
    assert_eq!(refused.status, 422, "{refused:?}");
    let refused: Value = serde_json::from_str(&refused.body).unwrap();
    let dead_letter = refused["dead_letter"].as_i64().unwrap();
    let message_id = refused["message_id"].as_str().unwrap().to_string();
    wait_received(&downstream, 3);

    let admin = host.admin.clone().unwrap();
    let mut browser = Browser::launch();
    browser.navigate(&format!("{admin}/console/"));
    // No token yet: the page asks for one, and fetched nothing.
    browser
        .wait_for("document.querySelector('#signin') && !document.querySelector('#signin').hidden");
    browser.eval(&format!(
        "document.querySelector('#token').value = '{TEST_ADMIN_TOKEN}'; document.querySelector('#signin-form').requestSubmit(); true"
    ));

    // Overview: the route's counters moved by the traffic.
    browser.wait_for("document.body.dataset.loaded === 'overview'");
    let row = "document.querySelector('#overview-table tr[data-route=\"mes\"]')";
    let received = browser.wait_for(&format!(
        "{row} && {row}.querySelector('.received').textContent === '4' && {row}.querySelector('.received').textContent"
    ));
    assert_eq!(received, "4");
    assert_eq!(
        browser.eval(&format!("{row}.querySelector('.failed').textContent")),
        "1"
    );
    assert_eq!(
        browser.eval(&format!("{row}.querySelector('.rate').textContent")),
        "25.0 %"
    );
    assert!(
        browser
            .eval(&format!("{row}.querySelector('.versions').textContent"))
            .as_str()
            .unwrap()
            .contains("mes-fixed-width@1.1.0")
    );
    assert_eq!(
        browser.eval(&format!(
            "{row}.querySelectorAll('svg.spark polyline').length > 0"
        )),
        true
    );
    browser.screenshot("overview");

    // Dead letters, reached from the keyboard: focus the tab, press Enter.
    browser.eval("document.querySelector('#tabs [data-view=\"dead-letters\"]').focus(); true");
    assert_eq!(
        browser.eval("document.activeElement.dataset.view"),
        "dead-letters"
    );
    browser.key("Enter", 13, "\r");
    browser.wait_for("document.body.dataset.loaded === 'dead-letters'");
    let entry = format!("document.querySelector('#dl-table tr[data-id=\"{dead_letter}\"]')");
    browser.wait_for(&entry);
    assert_eq!(
        browser.eval(&format!("{entry}.querySelector('.plant').textContent")),
        "plant-a"
    );
    assert_eq!(
        browser.eval(&format!("{entry}.querySelector('.domain').textContent")),
        "production"
    );
    assert!(
        browser
            .eval(&format!("{entry}.querySelector('.reason').textContent"))
            .as_str()
            .unwrap()
            .contains("WC77"),
    );
    assert!(
        browser
            .eval("document.querySelector('#dl-chart').textContent")
            .as_str()
            .unwrap()
            .contains("plant-a · production"),
    );
    assert_eq!(
        browser.eval(&format!("{entry}.querySelector('.replay').disabled")),
        true,
        "replay waits for a dry run"
    );
    browser.screenshot("dead-letters");

    // The fix: the lookup learns WC77 (the configuration is reloaded), then a dry run shows the
    // output and delivers nothing.
    std::fs::write(
        ws.config(),
        format!(
            "{}\n{}",
            config(
                &downstream.url,
                "{ WC01 = \"ASSY-01\", WC77 = \"REWORK-77\" }",
            ),
            test_admin_tokens()
        ),
    )
    .unwrap();
    let reloaded = host.admin("POST", "/v1/config/reload", b"");
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    browser.eval(&format!("{entry}.querySelector('.dry-run').click(); true"));
    browser.wait_for("document.querySelector('#dl-result').dataset.outcome === 'would-deliver'");
    let shown = browser.eval("document.querySelector('#dl-result').textContent");
    assert!(
        shown.as_str().unwrap().contains("WO-4") && shown.as_str().unwrap().contains("REWORK-77"),
        "{shown}"
    );
    assert_eq!(downstream.requests().len(), 3, "a dry run delivers nothing");
    browser.screenshot("dry-run");

    // The replay delivers it, once.
    browser.wait_for(&format!("!{entry}.querySelector('.replay').disabled"));
    browser.eval(&format!("{entry}.querySelector('.replay').click(); true"));
    browser.wait_for("document.querySelector('#dl-result').dataset.outcome === 'delivered'");
    wait_received(&downstream, 4);
    let delivered = downstream.requests();
    assert!(delivered[3].body.contains("REWORK-77"), "{delivered:?}");
    let again = host.admin(
        "POST",
        &format!("/v1/dead-letters/{dead_letter}/replay"),
        br#"{"dry_run": false}"#,
    );
    assert_eq!(
        again.status, 409,
        "a replayed dead letter is not replayed twice: {again:?}"
    );
    assert_eq!(downstream.requests().len(), 4);
    browser.screenshot("replayed");

    // The message's lineage: both runs, each step, the dead letter, the replay, the delivery.
    browser.eval("document.querySelector('#tabs [data-view=\"messages\"]').click(); true");
    browser.wait_for("document.body.dataset.loaded === 'messages'");
    browser.eval(&format!(
        "document.querySelector('#msg-id').value = '{message_id}'; document.querySelector('#msg-search').requestSubmit(); true"
    ));
    browser.wait_for(&format!(
        "document.querySelector('#lineage').dataset.message === '{message_id}'"
    ));
    let events = browser.eval(
        "[...document.querySelectorAll('#lineage li.hop')].map((h) => h.dataset.event).join(' ')",
    );
    assert_eq!(
        events,
        "failed dead-lettered replayed mediated delivered",
        "{}",
        browser.eval("document.querySelector('#lineage').innerText")
    );
    let steps = browser.eval(
        "[...document.querySelectorAll('#lineage li.step')].map((s) => s.querySelector('.step-name').textContent + ' ' + s.className).join('; ')",
    );
    assert_eq!(
        steps,
        "1. mes-fixed-width@1.1.0 step rejected; 1. mes-fixed-width@1.1.0 step outputs"
    );
    browser.screenshot("lineage");

    // A search by subject (the work order the events name) finds the messages.
    browser.eval(
        "document.querySelector('#msg-id').value = ''; document.querySelector('#msg-subject').value = 'WO-2'; document.querySelector('#msg-search').requestSubmit(); true",
    );
    browser
        .wait_for("document.querySelectorAll('#msg-table tbody tr td button.link').length === 1");

    for view in ["activations", "refusals"] {
        browser.eval(&format!(
            "document.querySelector('#tabs [data-view=\"{view}\"]').click(); true"
        ));
        browser.wait_for(&format!("document.body.dataset.loaded === '{view}'"));
        browser.screenshot(view);
    }
    assert!(
        browser
            .eval("document.querySelector('#act-list').textContent")
            .as_str()
            .unwrap()
            .contains("plant-a · mes-fixed-width")
    );
    // Events that arrived after the last answer.
    browser.eval("true");
    assert!(browser.errors.is_empty(), "{:#?}", browser.errors);

    // The same path over the API, and from the command line.
    let path = host.admin("GET", &format!("/v1/messages/{message_id}"), b"");
    assert_eq!(path.status, 200, "{path:?}");
    let path: Value = serde_json::from_str(&path.body).unwrap();
    assert_eq!(path["subject"], "WO-4");
    assert_eq!(path["hops"][1]["dead_letter"], dead_letter);
    assert_eq!(path["hops"][3]["steps"][0]["instance"], "reused");
    assert!(
        path["hops"][3]["steps"][0]["memory_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let cli = ws.millrace(&["trace", &message_id, "--config", "millrace.toml"]);
    let text = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success(), "{text}");
    assert!(text.contains("replayed by test-operator"), "{text}");
    assert!(text.contains("delivered 1 output(s) to http"), "{text}");
    assert!(host.stop().success());
}
