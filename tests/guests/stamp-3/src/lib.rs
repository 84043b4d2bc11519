//! Test guest: plugin `stamp` 3.0.0, which also reads the plant's state: it imports the `state`
//! capability, so a plant that grants the step only `log` must refuse it.

fn extra(host: &impl millrace_sdk::Host) -> Result<(), millrace_sdk::MediationError> {
    let _ = host.state_get("stamp");
    Ok(())
}

include!("../../stamp-1/src/stamp.rs");
