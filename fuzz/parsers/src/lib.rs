//! What the parser fuzz targets share: step settings from the plugins' own TOML files, and the
//! promise every answer must keep.

use millrace_sdk::{MediationError, Message, TestHost};

/// A host double with the settings of a TOML file (a vectors or corpus `settings.toml`).
pub fn host(settings_toml: &str) -> TestHost {
    let table: toml::Table = toml::from_str(settings_toml).expect("the plugin's settings parse");
    TestHost::new().with_settings(serde_json::to_value(table).expect("TOML is JSON"))
}

/// Pick one of `choices` by the first byte of `data`; the rest is the message body.
pub fn choose<'a, T>(data: &'a [u8], choices: &'a [T]) -> (&'a T, &'a [u8]) {
    match data.split_first() {
        Some((first, rest)) => (&choices[usize::from(*first) % choices.len()], rest),
        None => (&choices[0], data),
    }
}

/// Events or a rejection that says where: anything else (a panic included) is a finding.
pub fn check(result: Result<Vec<Message>, MediationError>) {
    match result {
        Ok(_) => {}
        Err(MediationError::Rejected(r)) => {
            assert!(!r.reason.is_empty(), "a rejection without a reason");
        }
        Err(other) => panic!("neither events nor a rejection: {other:?}"),
    }
}
