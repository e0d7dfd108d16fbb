//! Arbitrary bytes as a policy file, read exactly as the CLI and the gateway read one
//! (`Policy::parse_bytes`). Parsing must never panic, hang or overflow the stack (deep
//! nesting and alias bombs are refused by limits), and whatever is accepted must survive
//! its canonical text: that text parses back to an equal policy, prints again to the same
//! text, and hashes the same. A policy that changed meaning, or hash, on the way through a
//! revision would let the gateway store one thing and the supervisor enforce another.
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(policy) = Policy::parse_bytes("fuzz.yaml", data) else {
        return;
    };
    let text = policy.to_canonical_yaml();
    let again = match Policy::parse("canonical.yaml", &text) {
        Ok(p) => p,
        Err(e) => panic!("the canonical text of an accepted policy is refused: {e}\n{text}"),
    };
    assert_eq!(again, policy, "the canonical text means another policy:\n{text}");
    assert_eq!(again.to_canonical_yaml(), text, "the canonical text is not stable");
    assert_eq!(again.hash(), policy.hash());
});
