#![no_main]
// Decode arbitrary bytes as an event; the checks live in the library.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::history::events::fuzz_event_decode(data);
});
