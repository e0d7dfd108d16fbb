//! Feeds arbitrary bytes to everything in openshell-pki that reads user-supplied
//! certificate material: PEM/DER certificate parsing, `pki inspect`, bundle files, and the
//! serial and duration parsers behind command-line flags. None of them may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = openshell_pki::parse_certificates(data, "fuzz");
    let _ = openshell_pki::inspect_bytes(data, "fuzz", None);
    let _ = openshell_pki::ClientBundle::from_pem(data, "fuzz");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = openshell_pki::Serial::parse(text);
        let _ = openshell_pki::Duration::parse(text);
        let _ = openshell_pki::San::parse(text);
    }
});
