#![no_main]
// Decode arbitrary bytes as a history record; the checks live in the library.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::history::events::fuzz_history_record(data);
});
