//! A bounded fuzz run of the configuration parser and the HTTP envelope (the full,
//! coverage-guided runs are `scripts/fuzz`, docs/security.md): seeds from the repository's
//! configurations and sample messages, each mutated with a seeded, deterministic mutator. A
//! failing input is written to `target/fuzz-failures/` and named in the failure, with the seed
//! that reproduces the run (`MILLRACE_FUZZ_SEED`); `MILLRACE_FUZZ_RUNS` scales the run.

use crate::harness::*;
use millrace_host::fuzz::{Envelope, Mutator};

fn seed_and_scale() -> (u64, usize) {
    let seed = std::env::var("MILLRACE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let scale = std::env::var("MILLRACE_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    eprintln!("fuzz seed {seed} (MILLRACE_FUZZ_SEED={seed} repeats this run), scale {scale}");
    (seed, scale)
}

fn keep_failure(target: &str, seed: u64, input: &[u8], why: &str) -> ! {
    let dir = root().join("target/fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{target}-{seed}.bin"));
    std::fs::write(&file, input).unwrap();
    panic!(
        "{target}: {why}\ninput kept in {} (MILLRACE_FUZZ_SEED={seed})",
        file.display()
    );
}

/// `target(input)`'s result; a broken promise or a panic keeps the input and fails the test.
fn checked<T>(
    target: &str,
    seed: u64,
    input: &[u8],
    run: impl FnOnce(&[u8]) -> Result<T, String>,
) -> T {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(input))) {
        Ok(Ok(value)) => value,
        Ok(Err(why)) => keep_failure(target, seed, input, &why),
        Err(_) => keep_failure(target, seed, input, "panicked"),
    }
}

fn files(dir: &std::path::Path, ext: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for entry in walk(dir) {
        if entry.extension().is_some_and(|e| e == ext) {
            out.push(std::fs::read(entry).unwrap());
        }
    }
    out
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

#[test]
fn mutated_configurations_are_refused_with_located_errors_never_a_panic() {
    let (seed, scale) = seed_and_scale();
    let mut corpus = files(&root().join("examples"), "toml");
    corpus.extend(files(&root().join("tests/config"), "toml"));
    assert!(corpus.len() >= 20, "the seeds are missing");
    let dictionary: &[&[u8]] = &[
        b"[host]\n",
        b"[limits]\n",
        b"[tls]\n",
        b"[amqp_tls]\n",
        b"[admin]\n",
        b"[[admin.tokens]]\n",
        b"[plants.p]\n",
        b"[routes.r]\n",
        b"[[routes.r.steps]]\n",
        b"[routes.r.auth]\n",
        b"deadline_ms = ",
        b"memory_mib = ",
        b"max_body_kib = ",
        b"grants = [\"wasi\", \"state\"]\n",
        b"plugin = \"../../../etc/passwd\"\n",
        b"9223372036854775807",
        b"-1",
        b"1e400",
        b"nan",
        b"inf",
        b"\"\"",
        b"{ }",
        b"'''",
        b"\"\"\"",
        b"1979-05-27T07:32:00Z",
    ];
    let mut mutator = Mutator::new(seed, dictionary);
    let runs = 20_000 * scale;
    let mut refused = 0;
    for _ in 0..runs {
        let input = mutator.mutant(&corpus);
        if !checked("config", seed, &input, millrace_host::fuzz::config) {
            refused += 1;
        }
    }
    // The run reached the parser's refusals, not only one early error.
    assert!(refused > runs / 2, "{refused} of {runs} refused");
}

/// Requests a client could send to the quickstart's route, the seeds of the envelope run.
fn requests() -> Vec<Vec<u8>> {
    let samples = files(
        &root().join("examples/quickstart/samples/mes-confirmations"),
        "txt",
    );
    let mut out = Vec::new();
    for body in samples {
        let body = String::from_utf8(body).unwrap();
        out.push(format!(
            "POST /v1/routes/mes-confirmations/messages HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        ).into_bytes());
        out.push(format!(
            "POST /v1/routes/mes-confirmations/messages HTTP/1.1\r\nhost: a\r\ncontent-type: text/plain\r\nidempotency-key: k-1\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        ).into_bytes());
    }
    out.push(
        b"GET /healthz HTTP/1.1\r\nhost: a\r\n\r\nGET /readyz HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(),
    );
    out.push(
        b"POST /v1/routes/nope/messages HTTP/1.1\r\nhost: a\r\ncontent-length: 1\r\n\r\nx".to_vec(),
    );
    out.push(b"POST /v1/routes/mes-confirmations/messages HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc".to_vec());
    out
}

#[test]
fn mutated_requests_get_documented_answers_never_a_500_or_a_hang() {
    let (seed, scale) = seed_and_scale();
    let envelope = Envelope::new(&root().join("examples/quickstart/millrace.toml"))
        .expect("the quickstart host starts (plugins built by scripts/build-plugins)");
    let corpus = requests();
    // The seeds themselves: the route answers them.
    for seed_request in &corpus[..2] {
        assert_eq!(envelope.run(seed_request), Ok(vec![200]));
    }
    let dictionary: &[&[u8]] = &[
        b"\r\n",
        b"content-length: ",
        b"transfer-encoding: chunked\r\n",
        b"idempotency-key: ",
        b"content-type: ",
        b"expect: 100-continue\r\n",
        b"authorization: Bearer x\r\n",
        b"millrace-client: forged\r\n",
        b"/v1/routes/mes-confirmations/messages",
        b"/v1/routes/mes-confirmations/messages/../../healthz",
        b"%2e%2e%2f",
        b"POST ",
        b"GET ",
        b"HTTP/1.0",
        b"99999999999999999999",
        b"PC",
        b"WC01",
    ];
    let mut mutator = Mutator::new(seed, dictionary);
    let runs = 3_000 * scale;
    let mut answered = std::collections::BTreeMap::new();
    for _ in 0..runs {
        let input = mutator.mutant(&corpus);
        for status in checked("envelope", seed, &input, |input| envelope.run(input)) {
            *answered.entry(status).or_insert(0) += 1;
        }
    }
    eprintln!("statuses answered: {answered:?}");
    // The run got past the HTTP parser to mediation, and to its refusals.
    assert!(
        answered.get(&200).copied().unwrap_or(0) > runs / 50,
        "{answered:?}"
    );
    assert!(
        answered.keys().any(|s| (400..500).contains(s)),
        "{answered:?}"
    );
}
