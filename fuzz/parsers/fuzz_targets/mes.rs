//! mes-fixed-width: any bytes as fixed-width MES records, with the layout of the vectors.
#![no_main]

use millrace_sdk::TestHost;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let host = millrace_fuzz_parsers::host(include_str!(
        "../../../plugins/mes-fixed-width/vectors/settings.toml"
    ))
    .with_table("work_centres", [("WC01", "ASSY-01"), ("WC02", "PAINT-02")]);
    let message = TestHost::message("text/plain", data);
    millrace_fuzz_parsers::check(host.run::<mes_fixed_width::MesFixedWidth>(message));
});
