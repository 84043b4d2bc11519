//! Test guest: plugin `stamp` 2.0.0, the same code as 1.0.0 (a new version to swap to).

fn extra(_host: &impl millrace_sdk::Host) -> Result<(), millrace_sdk::MediationError> {
    Ok(())
}

include!("../../stamp-1/src/stamp.rs");
