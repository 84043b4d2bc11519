//! idoc-flat: any bytes as a flat or XML IDoc, read with the settings of the vectors (goods
//! movements, flat positions), the corpus (deliveries, positions and names) or its production
//! order case (names only); the first byte picks which.
#![no_main]

use millrace_sdk::TestHost;

const SETTINGS: [&str; 3] = [
    include_str!("../../../plugins/idoc-flat/vectors/settings.toml"),
    include_str!("../../../plugins/idoc-flat/corpus/settings.toml"),
    include_str!(
        "../../../plugins/idoc-flat/corpus/03-sap-samples-loipro05-production-order-xml/settings.toml"
    ),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (settings, body) = millrace_fuzz_parsers::choose(data, &SETTINGS);
    let host = millrace_fuzz_parsers::host(settings);
    millrace_fuzz_parsers::check(
        host.run::<idoc_flat::IdocFlat>(TestHost::message("text/plain", body)),
    );
});
