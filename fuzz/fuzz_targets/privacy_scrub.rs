//! The privacy scrubber on arbitrary bytes: no panic, the line scrubber fed in pieces
//! gives exactly what scrubbing the whole gives, and a planted AWS key never survives.
#![no_main]

use crashmesh_privacy::{PseudonymKey, ScrubConfig, ScrubCounts, Scrubber};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

/// Inputs stay under the line scrubber's smallest line limit, where pieces and whole
/// must agree exactly.
const INPUT_BYTES_MAX: usize = 4000;

fn scrubber() -> &'static Scrubber {
    static SCRUBBER: OnceLock<Scrubber> = OnceLock::new();
    SCRUBBER.get_or_init(|| {
        Scrubber::new(&ScrubConfig::default(), PseudonymKey::from_bytes([1; 32])).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&piece, input)) = data.split_first() else {
        return;
    };
    let input = &input[..input.len().min(INPUT_BYTES_MAX)];
    let scrubber = scrubber();
    let mut whole_counts = ScrubCounts::default();
    let whole = scrubber.scrub_bytes(input, &mut whole_counts);
    let mut lines = scrubber.lines();
    let mut pieces = Vec::new();
    for part in input.chunks(usize::from(piece).max(1)) {
        lines.push(part, &mut pieces);
    }
    let counts = lines.finish(&mut pieces);
    assert_eq!(pieces, whole);
    assert_eq!(counts, whole_counts);

    // The input may hold the key's bytes itself where they are not a key (`xAKIA…`), so
    // the planted one is gone when the count does not grow.
    let canary = b"AKIAZZZZZZZZZZZZZZZZ";
    let count = |bytes: &[u8]| bytes.windows(canary.len()).filter(|w| w == canary).count();
    let mut planted = input.to_vec();
    planted.extend_from_slice(b" AKIAZZZZZZZZZZZZZZZZ ");
    let out = scrubber.scrub_bytes(&planted, &mut ScrubCounts::default());
    assert!(count(&out) <= count(&whole));
    let _ = scrubber.scrub_environ(input, &mut ScrubCounts::default());
    let _ = scrubber.scrub_cmdline(input, &mut ScrubCounts::default());
});
