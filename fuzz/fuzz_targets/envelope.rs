//! The HTTP envelope: any bytes as what a client writes on one connection to the quickstart's
//! host (its plugins built by scripts/build-plugins).
#![no_main]

use std::sync::OnceLock;

static HOST: OnceLock<millrace_host::fuzz::Envelope> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let host = HOST.get_or_init(|| {
        let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/quickstart/millrace.toml");
        millrace_host::fuzz::Envelope::new(&config).expect("the quickstart host starts")
    });
    if let Err(why) = host.run(data) {
        panic!("{why}");
    }
});
