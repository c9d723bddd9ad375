#![no_main]
// Thin on purpose: the checks live in the library, so a normal test replays the corpus.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::lifecycle::check::check_decide_apply(data);
});
