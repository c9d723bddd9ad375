#![no_main]
// Any bytes, as a submitted zip: ingest must never panic, and what it accepts must be
// canonical. The check lives in the library so the replay test runs the same code.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::job::package::check_ingest_is_canonical(data);
});
