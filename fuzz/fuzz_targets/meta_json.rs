#![no_main]
// Any bytes, as a meta.json: parsing must never panic, and what it accepts must obey
// SPEC section 5. The check lives in the library so the replay test runs the same code.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::job::meta::check_meta_parse(data);
});
