//! Test guest: plugin `stamp` 1.0.0. Answers each message with `{"stamp": VERSION, "input":
//! BODY}`, so a test sees which version mediated it. Versions 2 and 3 share this code.

fn extra(_host: &impl millrace_sdk::Host) -> Result<(), millrace_sdk::MediationError> {
    Ok(())
}

include!("stamp.rs");
