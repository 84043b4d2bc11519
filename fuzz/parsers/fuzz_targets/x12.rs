//! x12-856: any bytes as an X12 file.
#![no_main]

use millrace_sdk::TestHost;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let message = TestHost::message("application/edi-x12", data);
    millrace_fuzz_parsers::check(TestHost::new().run::<x12_856::X12Asn>(message));
});
