//! `millrace check` on broken configurations, against expected output files:
//! `tests/config/NAME.toml` must fail with exactly `tests/config/NAME.stderr`.
//! Set `MILLRACE_BLESS=1` to rewrite the expected files from the current output (refused in CI).

use crate::harness::*;

#[test]
fn broken_configurations_fail_with_located_actionable_errors() {
    let dir = root().join("tests/config");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no config cases in {}", dir.display());
    // Every expected file has its case: none left behind by a deleted case.
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "stderr") {
            assert!(
                path.with_extension("toml").exists(),
                "{} has no case",
                path.display()
            );
        }
    }
    let bless = blessing();
    let mut failures = Vec::new();
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap();
        let out = run_in(&dir, &["check", "--config", name]);
        let stderr = String::from_utf8_lossy(&out.stderr).trim_end().to_string();
        let expected_path = case.with_extension("stderr");
        if bless {
            std::fs::write(&expected_path, format!("{stderr}\n")).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("missing {}", expected_path.display()));
        if out.status.code() != Some(1) || stderr != expected.trim_end() {
            failures.push(format!(
                "{name}: exit {:?}\n--- expected\n{}\n--- got\n{stderr}",
                out.status.code(),
                expected.trim_end()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
