//! Turning runtime client errors into the one-line, lowercase messages users see. Every
//! backend wraps a client library (bollard, kube) whose errors nest their causes.

use std::error::Error as StdError;

/// An error with its sources, as one line (a source already contained in the text is not
/// repeated).
pub fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// The innermost cause of a transport error ("Connection refused (os error 111)"): the
/// wrappers around it name client internals, not what happened.
pub fn root_cause(e: &(dyn StdError + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Runtime messages may start with a capital ("Minimum memory limit ..."); ours are
/// lowercase.
pub fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
