#![no_main]
// Arbitrary bytes as a snapshot's state behind this build's header, read on two threads
// and in one piece; the checks live in the library.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fedrun::history::snapshot::fuzz_snapshot_decode(data);
});
