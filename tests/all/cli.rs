//! `millrace plugin inspect`, `plugin test`, `check` and the compile cache.

use crate::harness::*;

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn inspect_shows_world_capabilities_digest_and_size() {
    let path = plugin("mes-fixed-width");
    let out = run_in(&root(), &["plugin", "inspect", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = stdout(&out);
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        text.contains(&format!("size:    {} bytes", bytes.len())),
        "{text}"
    );
    // The digest is the SHA-256 of the file's bytes, as `sha256sum` would print it.
    use sha2::Digest;
    let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
    assert!(
        text.contains(&format!("digest:  sha256:{sha256}\n")),
        "{sha256}: {text}"
    );
    assert!(
        text.contains("world:   millrace:mediation/plugin@0.1.0 (conforms)"),
        "{text}"
    );
    assert!(text.contains("plugin:  mes-fixed-width 1.1.0"), "{text}");
    for cap in ["log", "config", "lookup"] {
        assert!(text.contains(&format!("grant \"{cap}\"")), "{cap}: {text}");
    }
    assert!(text.contains("  mediate"), "{text}");

    // A plugin imports only what its code uses: the spin guest never reads config or lookups.
    let spin = run_in(
        &root(),
        &["plugin", "inspect", guest("guest-spin").to_str().unwrap()],
    );
    let text = stdout(&spin);
    assert!(text.contains("grant \"log\""), "{text}");
    assert!(
        !text.contains("grant \"config\"") && !text.contains("grant \"lookup\""),
        "{text}"
    );
}

#[test]
fn inspect_refuses_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"\0asm garbage").unwrap();
    let out = run_in(dir.path(), &["plugin", "inspect", "bogus.wasm"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a loadable Wasm component"));
}

#[test]
fn plugin_test_runs_one_message_and_exits_one_on_reject() {
    let ws = Workspace::new("");
    let settings = mes_settings("x").replace("[routes.x.steps.settings]\n", "");
    ws.write("settings.toml", &settings);
    ws.write("good.txt", &record("WO-5", "0000002000", "WC02"));
    ws.write("bad.txt", &record("WO-5", "00000X2000", "WC02"));
    ws.write("wc.csv", "local,canonical\nWC02,PAINT-02\n");
    let mes = plugin("mes-fixed-width");
    let args = |input: &'static str| {
        vec![
            "plugin",
            "test",
            mes.to_str().unwrap(),
            "--input",
            input,
            "--settings",
            "settings.toml",
            "--lookup",
            "work_centres=wc.csv",
            "--set",
            "source_system=\"mes-7\"",
        ]
        .into_iter()
        .map(str::to_string)
        .collect::<Vec<_>>()
    };
    // Without the test run's shared compile cache: a plain test keeps nothing.
    let run = |a: Vec<String>| {
        run_in_with_cache(
            ws.dir.path(),
            None,
            &a.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };

    let good = run(args("good.txt"));
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let text = stdout(&good);
    assert!(text.contains("\"work_centre\": \"PAINT-02\""), "{text}");
    assert!(
        text.contains("\"source\": \"/plants/local/mes-7\""),
        "{text}"
    );

    let bad = run(args("bad.txt"));
    assert_eq!(bad.status.code(), Some(1));
    let text = stdout(&bad);
    assert!(text.contains("rejected: line 1, field quantity"), "{text}");
    assert!(text.contains("position: 33"), "{text}");

    // With a compile cache the first test compiles into it and the next of the same bytes takes
    // the compiled code from it, with the same answer.
    let cached = |input: &'static str| {
        let mut a = args(input);
        a.extend(["--compile-cache".to_string(), "cache".to_string()]);
        run(a)
    };
    for (input, how) in [
        ("good.txt", "compiled, kept (if writable) in"),
        ("bad.txt", "taken from"),
        ("good.txt", "taken from"),
    ] {
        let out = cached(input);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("compile cache: {how} cache")),
            "{input}: {err}"
        );
        let plain = run(args(input));
        assert_eq!(out.status.code(), plain.status.code(), "{input}: {err}");
        assert_eq!(stdout(&out), stdout(&plain), "{input}");
        assert!(!String::from_utf8_lossy(&plain.stderr).contains("compile cache"));
    }
    // The vectors form keeps the compiled plugin in its cache too.
    let vectors = root().join("plugins/mes-fixed-width/vectors");
    let out = ws.millrace(&[
        "plugin",
        "test",
        mes.to_str().unwrap(),
        "--vectors",
        vectors.to_str().unwrap(),
        "--compile-cache",
        "vectors-cache",
    ]);
    assert!(out.status.success(), "{}", stdout(&out));
    let kept = walk_files(&ws.dir.path().join("vectors-cache"));
    assert!(kept > 0, "nothing kept in the vectors' compile cache");
}

/// Files under `dir`, at any depth.
fn walk_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() { walk_files(&path) } else { 1 }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn check_loads_every_plugin_and_a_restart_reuses_compiled_artifacts() {
    let mes = plugin("mes-fixed-width");
    // The ~18 MB Python and ~12 MB JavaScript components are the ones a restart must not
    // compile again. Each is granted exactly what its own world imports: a component that
    // imported anything more would not load.
    let map = "memory_mib = 128\nsettings = { codes = [{ path = \"data.work_centre\", table = \"work_centres\" }] }";
    let python = route_toml(
        "py",
        &plugin("canonical-map-py"),
        r#"["config", "lookup", "wasi"]"#,
        map,
    );
    let js = route_toml(
        "js",
        &plugin("canonical-map-js"),
        r#"["config", "lookup"]"#,
        map,
    );
    let ws = Workspace::new(
        &("[plants.plant-a.lookups.work_centres]\nentries = { WC01 = \"ASSY-01\" }\n\n"
            .to_string()
            + &python
            + &js
            + &route_toml("r", &mes, r#"["log", "config", "lookup"]"#, "")
            + &mes_settings("r")),
    );
    // In the data directory's own cache, not the test run's shared one.
    let check = || run_in_with_cache(ws.dir.path(), None, &["check"]);
    let first = check();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout(&first).contains("compile cache: 0 hit(s), 3 miss(es)"),
        "{}",
        stdout(&first)
    );
    let second = check();
    assert!(
        stdout(&second).contains("compile cache: 3 hit(s), 0 miss(es)"),
        "{}",
        stdout(&second)
    );
    assert!(
        stdout(&second).contains("route r (plant plant-a): mes-fixed-width@1.1.0"),
        "{}",
        stdout(&second)
    );
}

/// A plugin whose instance answers a repeated message differently (guest-act's `count`: how many
/// messages its instance served) fails its vectors on the second run, and `--bless` writes
/// nothing for that case; a case answered the same way both times passes and is blessed.
#[test]
fn a_case_answered_differently_by_the_instance_that_ran_it_fails_and_is_not_blessed() {
    let ws = Workspace::new("");
    for (case, body) in [("count", "count"), ("echo", "same each time")] {
        std::fs::create_dir_all(ws.dir.path().join("vectors").join(case)).unwrap();
        ws.write(&format!("vectors/{case}/input.txt"), body);
    }
    let act = guest("guest-act");
    let test = |bless: bool| {
        let mut args = vec![
            "plugin",
            "test",
            act.to_str().unwrap(),
            "--vectors",
            "vectors",
        ];
        if bless {
            args.push("--bless");
        }
        ws.millrace(&args)
    };
    let blessed = test(true);
    let text = stdout(&blessed);
    assert_eq!(blessed.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL count"), "{text}");
    assert!(
        text.contains("not blessed: run again on the instance that ran it"),
        "{text}"
    );
    assert!(text.contains("BLESSED echo"), "{text}");
    let expected = |case: &str| {
        ws.dir
            .path()
            .join("vectors")
            .join(case)
            .join("expected.json")
    };
    assert!(!expected("count").exists());
    assert!(expected("echo").exists());
    // What the first run gives, written by hand: the second run on the same instance differs.
    ws.write(
        "vectors/count/expected.json",
        r#"{"outputs": [{"id": "count-1", "content_type": "text/plain", "body": "{\"served\": 1}"}]}"#,
    );
    let tested = test(false);
    let text = stdout(&tested);
    assert_eq!(tested.status.code(), Some(1), "{text}");
    assert!(text.contains("FAIL count"), "{text}");
    assert!(text.contains(r#""body":"{\"served\": 2}""#), "{text}");
    assert!(text.contains("PASS echo"), "{text}");
}

#[test]
fn every_plugin_passes_its_conformance_vectors() {
    // Every folder of plugins/ is a plugin with vectors, checked by name: a plugin added without
    // vectors, or whose vectors stopped being found, fails here.
    let mut folders: Vec<String> = std::fs::read_dir(root().join("plugins"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().to_string())
        .collect();
    folders.sort();
    let mut checked = Vec::new();
    let mut corpora = Vec::new();
    for name in &folders {
        let vectors = root().join("plugins").join(name).join("vectors");
        assert!(vectors.is_dir(), "plugins/{name} has no vectors/ folder");
        let cases = passes_every_case(name, &vectors);
        assert!(cases >= 3, "{name}: only {cases} cases");
        checked.push(name.clone());
        // Real-world files gathered from other projects, each with its expected answer.
        let corpus = root().join("plugins").join(name).join("corpus");
        if corpus.is_dir() {
            assert!(
                corpus.join("SOURCES.md").is_file(),
                "plugins/{name}/corpus has no SOURCES.md"
            );
            corpora.push((name.clone(), passes_every_case(name, &corpus)));
        }
    }
    for (expected, at_least) in [("x12-856", 15), ("csv-records", 10), ("idoc-flat", 10)] {
        assert!(
            corpora
                .iter()
                .any(|(name, cases)| name == expected && *cases >= at_least),
            "{expected} has no corpus of {at_least} files or more: {corpora:?}"
        );
    }
    for expected in [
        "canonical-map",
        "canonical-map-js",
        "canonical-map-py",
        "csv-records",
        "downtime-router",
        "downtime-router-c",
        "idoc-flat",
        "mes-fixed-width",
        "policy-guard",
        "x12-856",
    ] {
        assert!(
            checked.iter().any(|c| c == expected),
            "{expected} not checked: {checked:?}"
        );
    }
}

/// Run a folder of cases against the plugin `name`; every case folder must pass. Returns how many
/// there were.
fn passes_every_case(name: &str, dir: &std::path::Path) -> usize {
    let cases = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref().unwrap().path().is_dir() && e.as_ref().unwrap().file_name() != "lookups"
        })
        .count();
    let out = run_in(
        &root(),
        &[
            "plugin",
            "test",
            plugin(name).to_str().unwrap(),
            "--vectors",
            dir.to_str().unwrap(),
        ],
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{name} {}:\n{text}{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.trim_end()
            .ends_with(&format!("{cases} passed, 0 failed")),
        "{name}: expected all {cases} case folders of {} to pass: {text}",
        dir.display()
    );
    cases
}

#[test]
fn a_vector_the_plugin_does_not_meet_fails_with_the_difference() {
    let src = root().join("plugins/mes-fixed-width/vectors");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("settings.toml"), dir.path().join("settings.toml")).unwrap();
    std::fs::create_dir(dir.path().join("lookups")).unwrap();
    std::fs::copy(
        src.join("lookups/work_centres.csv"),
        dir.path().join("lookups/work_centres.csv"),
    )
    .unwrap();
    let case = dir.path().join("wrong-expectation");
    std::fs::create_dir(&case).unwrap();
    std::fs::copy(
        src.join("04-bad-quantity/input.txt"),
        case.join("input.txt"),
    )
    .unwrap();
    std::fs::write(case.join("expected.json"), r#"{"outputs": []}"#).unwrap();
    let out = run_in(
        dir.path(),
        &[
            "plugin",
            "test",
            plugin("mes-fixed-width").to_str().unwrap(),
            "--vectors",
            ".",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("FAIL wrong-expectation"), "{text}");
    assert!(text.contains("\"rejected\""), "{text}");
    assert!(text.trim_end().ends_with("0 passed, 1 failed"), "{text}");
}

#[test]
fn plugin_test_help_describes_every_argument() {
    let out = run_in(&root(), &["plugin", "test", "--help"]);
    assert!(out.status.success());
    let help = stdout(&out);
    for argument in [
        "<FILE>",
        "--input",
        "--content-type",
        "--deadline-ms",
        "--memory-mib",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(argument))
            .unwrap_or_else(|| panic!("no {argument} in:\n{help}"));
        let described = line.trim_start()[argument.len()..]
            .split_whitespace()
            .filter(|w| !w.starts_with('<') && !w.starts_with('['))
            .count()
            > 2;
        assert!(described, "{argument} is not described: {line:?}");
    }
}

/// The settled ids' filter knows only what its own host settles, so a data directory serves one
/// host: a second `millrace run` on it refuses to start and names the lock; once the first has
/// stopped, a host starts on it again.
#[test]
fn a_second_host_on_the_same_data_directory_refuses_to_start_and_says_why() {
    let ws = Workspace::new(&format!("[plants.plant-a]\n\n{}", act_route("act", "")));
    let first = ws.start();
    first.wait_ready();
    let mut second = millrace()
        .args(["run", "--config"])
        .arg(ws.config())
        .args(["--http", "127.0.0.1:0"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("millrace run starts");
    // A guard against a second host that runs, not a timing assertion.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second host on the same data directory kept running");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("idempotency.lock is held by another process: a data directory serves one host at a time"),
        "{stderr}"
    );
    first.wait_ready();
    assert!(first.stop().success());
    let again = ws.start();
    again.wait_ready();
    assert!(again.stop().success());
}

/// The window of kept answers and settled ids is checked against its range (its milliseconds
/// are computed with it), with the place of the wrong value.
#[test]
fn an_idempotency_window_out_of_range_is_refused_where_it_is_written() {
    let route = act_route("act", "");
    let ws = Workspace::new(&format!(
        "[host]\nidempotency_window_s = 18446744073709551\n\n[plants.plant-a]\n\n{route}"
    ));
    let out = ws.millrace(&["check", "--config", ws.config().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "millrace.toml:2:24: host.idempotency_window_s = 18446744073709551 is out of range; it must be 0 to 31536000"
        ),
        "{stderr}"
    );
    let ws = Workspace::new(&format!(
        "[host]\nidempotency_window_s = 31536000\n\n[plants.plant-a]\n\n{route}"
    ));
    let out = ws.millrace(&["check", "--config", ws.config().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compile_cache_is_the_configured_one_else_the_environments_else_the_data_directorys() {
    let mes = plugin("mes-fixed-width");
    let routes = "[plants.plant-a.lookups.work_centres]\nentries = { WC01 = \"ASSY-01\" }\n\n"
        .to_string()
        + &route_toml("r", &mes, r#"["log", "config", "lookup"]"#, "")
        + &mes_settings("r");
    let ws = Workspace::new(&routes);
    let check = |env: Option<&str>| {
        let cache = env.map(|dir| ws.dir.path().join(dir));
        let out = run_in_with_cache(ws.dir.path(), cache.as_deref(), &["check"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout(&out)
    };
    let kept = |dir: &str| walk_files(&ws.dir.path().join(dir));
    // The environment's cache when the file names none, and only that one.
    assert!(check(Some("from-env")).contains("0 hit(s), 1 miss(es)"));
    assert!(kept("from-env") > 0 && kept(".millrace/compile-cache") == 0);
    assert!(check(Some("from-env")).contains("1 hit(s), 0 miss(es)"));
    // Without it, the data directory's.
    assert!(check(None).contains("0 hit(s), 1 miss(es)"));
    assert!(kept(".millrace/compile-cache") > 0);
    // `host.compile_cache` (relative to the file's folder) wins over the environment.
    ws.write(
        "millrace.toml",
        &format!("[host]\ncompile_cache = \"from-file\"\n\n{routes}"),
    );
    assert!(check(Some("from-env")).contains("0 hit(s), 1 miss(es)"));
    assert!(kept("from-file") > 0);
    assert!(check(Some("elsewhere")).contains("1 hit(s), 0 miss(es)"));
    assert_eq!(kept("elsewhere"), 0);
    // A relative path in the variable is taken from the working directory, not the file's.
    ws.write("millrace.toml", &routes);
    let cwd = ws.dir.path().join("cwd");
    std::fs::create_dir(&cwd).unwrap();
    let out = run_in_with_cache(
        &cwd,
        Some(std::path::Path::new("relative")),
        &["check", "--config", "../millrace.toml"],
    );
    assert!(
        stdout(&out).contains("0 hit(s), 1 miss(es)"),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(kept("cwd/relative") > 0 && kept("relative") == 0);
}
