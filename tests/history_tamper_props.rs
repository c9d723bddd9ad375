//! Property: whatever single record is removed, garbled, forged or swapped with its
//! neighbour, the audit names exactly that record as the first bad one (for a forged
//! record, the link of the record after it is what breaks, and the audit names the
//! earlier of the two, the forged one).
mod history_support;

use fedrun::history::{record, ChainHash, History, MemoryStorage, Storage};
use history_support::{steps, Step, Steps};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Tamper {
    Remove,
    Garble,
    Forge,
    SwapWithNext,
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        Just(Tamper::Remove),
        Just(Tamper::Garble),
        Just(Tamper::Forge),
        Just(Tamper::SwapWithNext),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_audit_names_the_tampered_record(
        records in 2u64..60,
        position in any::<prop::sample::Index>(),
        how in tamper(),
        garbage in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let storage = MemoryStorage::new();
        let mut history = History::<Step>::in_memory(storage.clone()).unwrap();
        for chunk in steps(1, records).chunks(7) {
            history.append_batch(chunk).unwrap();
        }
        // The anchor covers the last record, as after a clean shutdown.
        let head = history.head();
        history.close().unwrap();
        let mut handle = storage.clone();
        handle.settle_anchor(head).unwrap();

        // Swapping needs a next record; the others may hit any record.
        let last = match how {
            Tamper::SwapWithNext => records - 1,
            _ => records,
        };
        let seq = 1 + position.index(last as usize) as u64;
        let bytes = |seq: u64| storage.read(seq).unwrap().unwrap();
        match how {
            Tamper::Remove => storage.tamper(seq, None),
            Tamper::Garble => {
                // Garbage that is not a record: a 0xc1 byte never starts valid MessagePack.
                let mut garbled = vec![0xc1];
                garbled.extend(&garbage);
                storage.tamper(seq, Some(garbled));
            }
            Tamper::Forge => {
                let prev = if seq == 1 {
                    record::GENESIS_HASH
                } else {
                    ChainHash::of(&bytes(seq - 1))
                };
                let forged = Step { seq, job: 1_000_000, step: 1, note: "forged".into() };
                storage.tamper(seq, Some(record::encode(seq, prev, &forged).unwrap()));
            }
            Tamper::SwapWithNext => {
                let (a, b) = (bytes(seq), bytes(seq + 1));
                storage.tamper(seq, Some(b));
                storage.tamper(seq + 1, Some(a));
            }
        }

        let reopened = History::<Step>::in_memory(storage.clone());
        // Tampering with the anchored last record is refused at open already.
        if seq == records && !matches!(how, Tamper::SwapWithNext) {
            prop_assert!(reopened.is_err(), "{how:?} of the last record must fail the open");
        }
        let audited = History::<Step>::for_audit(Box::new(storage.clone())).unwrap();
        let report = audited.verify(Steps::default());
        prop_assert!(!report.is_ok());
        prop_assert_eq!(report.first_bad_seq(), Some(seq), "{:?} at {}: {:?}", how, seq, report);
    }
}
