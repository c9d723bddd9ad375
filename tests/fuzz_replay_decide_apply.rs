//! Replays the committed corpus of the `decide_apply` fuzz target (seeds and every crashing
//! input), plus a fixed sweep of pseudo-random inputs, through the library's check.

use std::path::Path;

#[test]
fn every_corpus_input_passes_the_decide_apply_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/decide_apply");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the corpus folder exists") {
        let path = entry.expect("directory entry").path();
        let data = std::fs::read(&path).expect("corpus file reads");
        fedrun::lifecycle::check::check_decide_apply(&data);
        count += 1;
    }
    assert!(count >= 10, "the corpus has inputs ({count})");
}

#[test]
fn a_fixed_sweep_of_generated_inputs_passes_the_check() {
    // A small linear congruential generator: the same inputs on every run.
    let mut seed: u64 = 0x5eed_f00d;
    let mut next = || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) as u8
    };
    for case in 0..300 {
        let len = 32 + (case * 7) % 1500;
        let data: Vec<u8> = (0..len).map(|_| next()).collect();
        fedrun::lifecycle::check::check_decide_apply(&data);
    }
}
