#![no_main]
// Any bytes, as a scenario file: when `sim::scenario` reads it a job at a time, the
// scenario must be the one the whole-document parse reads, and a text the whole parse
// refuses must never be read. The check lives in the library so the replay test runs it.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::sim::scenario::check_read_by_job(data);
});
