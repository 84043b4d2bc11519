//! Writing plugins: `millrace plugin new | build | dev` in Rust, C, Python and JavaScript, and
//! the guide of docs/plugins.md run as it is written.

use crate::harness::*;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;

/// The shell blocks of docs/plugins.md's guide for `language`, in document order: the blocks
/// marked `sh guide` and the one marked `sh guide-LANGUAGE`.
fn guide(language: &str) -> String {
    let text = std::fs::read_to_string(root().join("docs/plugins.md")).expect("docs/plugins.md");
    let own = format!("sh guide-{language}");
    let (mut script, mut inside, mut take) = (String::new(), false, false);
    for line in text.lines() {
        if let Some(info) = line.strip_prefix("```") {
            take = !inside && (info == "sh guide" || info == own);
            inside = !inside;
        } else if inside && take {
            script.push_str(line);
            script.push('\n');
        }
    }
    script
}

/// The folder of the `millrace` under test, first on PATH.
fn path_with_millrace() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_millrace")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Where the Rust plugins these tests make build, shared so std is built once.
fn rust_target_dir() -> PathBuf {
    root().join("target/authoring")
}

#[test]
fn the_plugin_guide_runs_as_written_in_each_language() {
    // One test, the languages one after another: the guide's host listens on fixed ports.
    for language in ["c", "python", "js", "rust"] {
        let script = guide(language);
        assert!(
            script.contains(&format!("plugin new work-report --lang {language}")),
            "docs/plugins.md has no guide step for {language}:\n{script}"
        );
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg("-c")
            // A failed step fails the run; the host the guide starts is stopped whatever happens.
            .arg(format!(
                "set -euo pipefail\ntrap 'jobs -p | xargs -r kill' EXIT\n{script}"
            ))
            .current_dir(dir.path())
            .env("PATH", path_with_millrace())
            .env("CARGO_TARGET_DIR", rust_target_dir())
            .env("MILLRACE_COMPILE_CACHE", shared_compile_cache())
            .env_remove("MILLRACE_ADMIN_TOKEN")
            .output()
            .expect("bash runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("{language}:\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
        assert!(out.status.success(), "{all}");
        assert!(stdout.contains("PASS reported"), "{all}");
        assert!(stdout.contains("PASS not-a-number"), "{all}");
        assert!(stdout.contains("2 passed, 0 failed"), "{all}");
        assert!(
            stdout.contains("bundled 2 vector case(s)"),
            "the new version carries its vectors: {all}"
        );
        // A Rust or C plugin's code goes through wasm-opt (scripts/setup installs it) and comes
        // out smaller; the interpreters of Python and JavaScript plugins do not.
        let builds: Vec<&str> = stdout
            .lines()
            .filter(|l| l.starts_with("built work-report"))
            .collect();
        assert_eq!(builds.len(), 2, "{all}");
        for line in builds {
            let sizes = line.split("; wasm-opt -O3: code ").nth(1).map(|s| {
                let (before, after) = s.split_once(" → ").expect("code A → B bytes");
                let after = after.split_once(' ').expect("B bytes").0;
                (
                    before.parse::<u64>().unwrap(),
                    after.parse::<u64>().unwrap(),
                )
            });
            match sizes {
                Some((before, after)) => assert!(
                    matches!(language, "c" | "rust") && after < before,
                    "{line}: {all}"
                ),
                None => assert!(matches!(language, "python" | "js"), "{line}: {all}"),
            }
        }
        // Both records served: one by the first version, one by the deployed one.
        for work_order in ["WO-1001", "WO-1002"] {
            let event = stdout
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .flat_map(|v| match v {
                    serde_json::Value::Array(items) => items,
                    other => vec![other],
                })
                .find(|v| v["work_order"] == work_order)
                .unwrap_or_else(|| panic!("no event for {work_order}: {all}"));
            assert_eq!(event["event"], "production.reported", "{all}");
            assert_eq!(event["plant"], "local", "{all}");
            assert_eq!(event["source"], "mes", "{all}");
        }
        // `plugin versions` printed the plant's versions: 0.2.0 active, 0.1.0 kept.
        // (pretty JSON: its keys sorted, the object's last line a `}` of its own)
        let start = stdout
            .find("{\n  \"active\"")
            .unwrap_or_else(|| panic!("no versions printed: {all}"));
        let end = start + stdout[start..].find("\n}").unwrap() + 2;
        let versions: serde_json::Value =
            serde_json::from_str(&stdout[start..end]).unwrap_or_else(|e| panic!("{e}: {all}"));
        assert_eq!(versions["active"]["version"], "0.2.0", "{all}");
        let kept: Vec<&str> = versions["versions"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["version"].as_str())
            .collect();
        assert!(kept.contains(&"0.1.0") && kept.contains(&"0.2.0"), "{all}");

        // The component imports exactly what the template's route grants.
        let plugin = dir.path().join("work-report");
        let inspect = millrace()
            .args(["plugin", "inspect"])
            .arg(plugin.join("target/work-report.wasm"))
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&inspect.stdout);
        let granted: Vec<String> = shown
            .lines()
            .filter_map(|l| l.split("grant \"").nth(1))
            .map(|g| g.trim_end_matches('"').to_string())
            .collect();
        let config = std::fs::read_to_string(plugin.join("millrace.toml")).unwrap();
        let grants = config
            .lines()
            .find_map(|l| l.strip_prefix("grants = "))
            .unwrap();
        let mut expected: Vec<String> = grants
            .split('#')
            .next()
            .unwrap()
            .trim()
            .trim_matches(['[', ']'])
            .split(',')
            .map(|g| g.trim().trim_matches('"').to_string())
            .collect();
        let mut granted_sorted = granted.clone();
        granted_sorted.sort();
        granted_sorted.dedup();
        expected.sort();
        assert_eq!(granted_sorted, expected, "{language}: {shown}");
        assert!(shown.contains("plugin:  work-report 0.2.0"), "{shown}");
        if language == "js" {
            let types = std::fs::read_to_string(plugin.join("types/work-report.d.ts"))
                .expect("TypeScript declarations generated from wit/");
            assert!(types.contains("export function mediate("), "{types}");
            assert!(
                plugin
                    .join("types/interfaces/millrace-mediation-config.d.ts")
                    .is_file()
            );
        }
    }
}

/// `millrace plugin dev` on a C plugin, its stdout lines as they come.
struct Dev {
    child: std::process::Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Dev {
    fn start(dir: &Path, admin: &str) -> Dev {
        let mut child = millrace()
            .args(["plugin", "dev"])
            .arg(dir)
            .args(["--admin", admin, "--plant", "local", "--interval-ms", "100"])
            .env("MILLRACE_ADMIN_TOKEN", TEST_ADMIN_TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Dev {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The lines of the next round, through its last step (`activate …` or `not deployed …`).
    fn round(&mut self) -> String {
        let mut round = Vec::new();
        loop {
            let line = self.lines.recv_timeout(GUARD).unwrap_or_else(|_| {
                panic!(
                    "plugin dev ended a round late or never:\n{}",
                    self.seen.join("\n")
                )
            });
            self.seen.push(line.clone());
            let last = line.starts_with("activate ") || line.starts_with("not deployed");
            round.push(line);
            if last {
                return round.join("\n");
            }
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn active_version(host: &Host) -> String {
    let reply = host.admin("GET", "/v1/plants/local/plugins/shift-count", b"");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["active"]["version"]
        .as_str()
        .unwrap()
        .to_string()
}

fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", file.display());
    std::fs::write(file, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn plugin_dev_deploys_a_change_only_when_it_builds_and_passes_its_vectors() {
    let work = tempfile::tempdir().unwrap();
    let plugin = work.path().join("shift-count");
    let new = millrace()
        .args(["plugin", "new", "shift-count", "--lang", "c", "--dir"])
        .arg(&plugin)
        .output()
        .unwrap();
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    let build = millrace()
        .args(["plugin", "build"])
        .arg(&plugin)
        .output()
        .unwrap();
    assert!(
        build.status.success(),
        "{}",
        String::from_utf8_lossy(&build.stderr)
    );
    // A host on ephemeral ports with the plugin's route as `plugin new` wrote it.
    let generated = std::fs::read_to_string(plugin.join("millrace.toml")).unwrap();
    let route = &generated[generated.find("\n[plants.").unwrap()..];
    let ws = Workspace::new(&format!(
        "[host]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\nplugin_dir = \"{}\"\n\n{route}",
        plugin.join("target").display()
    ));
    let host = ws.start();
    let admin = host.admin.clone().expect("admin API");
    let served = |work_order: &str| {
        let reply = host.post(
            "shift-count",
            Some("text/plain"),
            format!("{work_order};5;EA"),
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.body
    };
    assert_eq!(active_version(&host), "0.1.0");

    let mut dev = Dev::start(&plugin, &admin);
    let first = dev.round();
    assert!(first.contains("build    ok"), "{first}");
    assert!(first.contains("vectors  ok"), "{first}");
    assert!(first.contains("activate ok"), "{first}");
    let deployed = active_version(&host);
    assert!(deployed.starts_with("0.1.0-dev."), "{deployed}");

    // A syntax error: the build fails, nothing is deployed.
    let source = plugin.join("mediate.c");
    edit(&source, "return ok;\n}", "return ok\n}");
    let broken = dev.round();
    assert!(broken.contains("build    FAILED"), "{broken}");
    assert!(broken.contains("not deployed"), "{broken}");
    assert_eq!(active_version(&host), deployed);

    // It builds again but emits another event name: the vector `reported` fails, nothing is
    // deployed, and the route still answers with the deployed version's event.
    edit(&source, "return ok\n}", "return ok;\n}");
    edit(
        &source,
        "{\\\"event\\\":\\\"production.reported\\\"",
        "{\\\"event\\\":\\\"production.counted\\\"",
    );
    let failing = dev.round();
    assert!(failing.contains("build    ok"), "{failing}");
    assert!(failing.contains("vectors  FAILED"), "{failing}");
    assert!(failing.contains("FAIL reported"), "{failing}");
    assert!(failing.contains("not deployed"), "{failing}");
    assert_eq!(active_version(&host), deployed);
    assert!(served("WO-1").contains("production.reported"));

    // The vector updated to the new behaviour: deployed and activated, and it serves.
    edit(
        &plugin.join("vectors/reported/expected.json"),
        "\"production.reported\"",
        "\"production.counted\"",
    );
    let fixed = dev.round();
    assert!(fixed.contains("vectors  ok"), "{fixed}");
    assert!(fixed.contains("deploy   ok"), "{fixed}");
    assert!(fixed.contains("activate ok"), "{fixed}");
    let now = active_version(&host);
    assert!(
        now.starts_with("0.1.0-dev.") && now != deployed,
        "{now} after {deployed}"
    );
    assert!(served("WO-2").contains("production.counted"));
}

#[test]
fn the_authoring_commands_say_what_to_do_next() {
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = millrace()
            .args(args)
            .current_dir(work.path())
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?} should fail");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    // Not a plugin folder.
    let e = run(&["plugin", "build", "."], &[]);
    assert!(e.contains("millrace plugin new"), "{e}");
    let e = run(&["plugin", "dev", ".", "--plant", "local"], &[]);
    assert!(e.contains("millrace plugin new"), "{e}");
    // A name that is not a world name.
    let e = run(&["plugin", "new", "Work_Report", "--lang", "c"], &[]);
    assert!(e.contains("lower-case words"), "{e}");
    // A language without its toolchain: which one, and how to get it.
    let new = millrace()
        .args(["plugin", "new", "py-plugin", "--lang", "python"])
        .current_dir(work.path())
        .output()
        .unwrap();
    assert!(new.status.success());
    let e = run(
        &["plugin", "build", "py-plugin"],
        &[("MILLRACE_TOOLS", "/nonexistent")],
    );
    assert!(e.contains("componentize-py is missing"), "{e}");
    assert!(e.contains("scripts/setup"), "{e}");
    // Not over an existing plugin.
    let e = run(&["plugin", "new", "py-plugin", "--lang", "js"], &[]);
    assert!(e.contains("exists and is not empty"), "{e}");
    // A manifest with a version describe() could not report.
    edit(
        &work.path().join("py-plugin/millrace-plugin.toml"),
        "version = \"0.1.0\"",
        "version = \"one\"",
    );
    let e = run(&["plugin", "build", "py-plugin"], &[]);
    assert!(e.contains("MAJOR.MINOR.PATCH"), "{e}");
}
