//! The tunnel-target grammar (`openshell-tunnel: <target>` on every CONNECT), read from a
//! header exactly as the gateway reads it. Parsing must never panic, and anything accepted
//! must print back to the same text: two spellings of one target would let a client slip
//! past a check written against the canonical form (a log filter, a policy rule).
#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_transport::TunnelTarget;
use openshell_transport::tunnel::TARGET_HEADER;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Some(target) = TunnelTarget::parse(text)
    {
        assert_eq!(
            target.to_string(),
            text,
            "accepted a non-canonical spelling"
        );
    }
    if let Ok(value) = http::HeaderValue::from_bytes(data) {
        let mut headers = http::HeaderMap::new();
        headers.insert(TARGET_HEADER, value);
        if let Some(target) = TunnelTarget::from_headers(&headers) {
            assert_eq!(target.to_string().as_bytes(), data);
        }
    }
});
