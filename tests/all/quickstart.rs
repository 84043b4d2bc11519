//! The quickstart example gives exactly its documented outputs
//! (`examples/quickstart/expected/NAME.json` for `samples/NAME.txt`).

use crate::harness::*;

#[test]
fn quickstart_samples_give_the_expected_outputs() {
    let example = root().join("examples/quickstart");
    let config = std::fs::read_to_string(example.join("millrace.toml"))
        .unwrap()
        .replace(
            "plugin_dir = \"../../target/plugins\"",
            &format!(
                "plugin_dir = \"{}\"",
                root().join("target/plugins").display()
            ),
        );
    let ws = Workspace::new(&config);
    ws.write(
        "work-centres.csv",
        &std::fs::read_to_string(example.join("work-centres.csv")).unwrap(),
    );
    let host = ws.start();
    let mut samples: Vec<_> = std::fs::read_dir(example.join("samples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    samples.sort();
    assert!(samples.len() >= 5);
    for sample in samples {
        let name = sample.file_stem().unwrap().to_str().unwrap().to_string();
        let reply = host.post_with_key(
            "mes-confirmations",
            "text/plain",
            &format!("quickstart-{name}"),
            std::fs::read(&sample).unwrap(),
        );
        let mut got = serde_json::json!({ "status": reply.status, "content_type": reply.content_type, "body": reply.json() });
        // The digest changes with every plugin build; other tests check it.
        if got["body"].get("digest").is_some() {
            got["body"]["digest"] = "sha256:…".into();
        }
        let expected_path = example.join("expected").join(format!("{name}.json"));
        if std::env::var_os("MILLRACE_BLESS").is_some() {
            std::fs::create_dir_all(expected_path.parent().unwrap()).unwrap();
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&got).unwrap() + "\n",
            )
            .unwrap();
            continue;
        }
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&expected_path).unwrap()).unwrap();
        assert_eq!(got, expected, "{name}");
    }
}
