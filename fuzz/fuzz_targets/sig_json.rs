#![no_main]
// Parses arbitrary bytes as a `.__nvfl_sig.json` and round-trips what parses; the check
// lives in the library so the corpus replay test runs the same code.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::trust::sigfile::fuzz_check(data);
});
