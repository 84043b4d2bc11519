//! The configuration parser: any bytes as a configuration file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Err(why) = millrace_host::fuzz::config(data) {
        panic!("{why}");
    }
});
