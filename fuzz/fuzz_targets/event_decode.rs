#![no_main]
// Placeholder until the owning module's check lands.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = data;
});
