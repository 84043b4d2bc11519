//! csv-records: any bytes as a CSV file, read with the settings of a vector or corpus case
//! (the first byte picks which).
#![no_main]

use millrace_sdk::TestHost;

const SETTINGS: [&str; 5] = [
    include_str!("../../../plugins/csv-records/vectors/settings.toml"),
    include_str!("../../../plugins/csv-records/vectors/09-no-header-consumption/settings.toml"),
    include_str!("../../../plugins/csv-records/corpus/11-hobo-u23-hoboware-bom-crlf/settings.toml"),
    include_str!(
        "../../../plugins/csv-records/corpus/17-rotronic-logger-sections-date-time-cols/settings.toml"
    ),
    include_str!(
        "../../../plugins/csv-records/corpus/01-twincat-scope-tab-decimalcomma/settings.toml"
    ),
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let (settings, body) = millrace_fuzz_parsers::choose(data, &SETTINGS);
    let host = millrace_fuzz_parsers::host(settings);
    millrace_fuzz_parsers::check(
        host.run::<csv_records::CsvRecords>(TestHost::message("text/csv", body)),
    );
});
