//! getrandom's `custom` backend on wasm32, where a plugin has no entropy source: the schema
//! validator's hash maps get fixed seeds.
//!
//! Those maps hold schema keywords and locations, not input keys (message JSON is parsed into
//! ordered maps), so fixed seeds do not expose the plugin to hash flooding by its inputs.

/// Called by getrandom 0.3 when built with `--cfg getrandom_backend="custom"`.
///
/// # Safety
/// getrandom passes a writable buffer of `len` bytes.
#[unsafe(no_mangle)]
unsafe extern "Rust" fn __getrandom_v03_custom(
    dest: *mut u8,
    len: usize,
) -> Result<(), getrandom::Error> {
    // SAFETY: the caller's contract above.
    let dest = unsafe { std::slice::from_raw_parts_mut(dest, len) };
    for (i, byte) in dest.iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(0x9d) ^ 0x5a;
    }
    Ok(())
}
