//! YAML text to a small tree whose every node keeps its line and column.
//!
//! serde_yaml knows positions only for its own type errors; the contradictions this crate
//! refuses (a path both read-only and read-write, a port out of range) are found after
//! deserialization, where serde has forgotten them. So the text goes through
//! `saphyr-parser` (a YAML 1.2 event parser that marks every event) into [`Node`]s, and
//! `parse.rs` reads the policy from those, knowing where each value was written.
//!
//! Limits that keep hostile input cheap: the text's size, the nesting depth (the tree is
//! built without recursion and is never deeper than [`MAX_DEPTH`], so dropping it cannot
//! overflow the stack), and the number of nodes including those copied by aliases (so a
//! "billion laughs" document is refused instead of expanded).

use saphyr_parser::{Event, Parser, ScalarStyle, Span};

use crate::PolicyError;

/// Largest policy text read, in bytes. OpenShell's own examples are under 4 KiB.
pub const MAX_BYTES: usize = 1 << 20;
/// Deepest nesting of mappings and lists. The schema needs 8; middleware configs and MCP
/// parameter matchers may nest further.
pub const MAX_DEPTH: usize = 64;
/// Most nodes in a document, counting each copy an alias makes.
pub const MAX_NODES: usize = 100_000;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub col: usize,
}

impl Pos {
    fn of(span: &Span) -> Pos {
        Pos {
            line: span.start.line(),
            col: span.start.col() + 1,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    /// A scalar's text; `plain` when it was written without quotes or a block indicator
    /// (only plain scalars can be null, booleans or numbers).
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    /// Entries in document order; keys are scalars (checked while building).
    Map(Vec<(Key, Node)>),
}

#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub text: String,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

/// A plain scalar's meaning in the YAML 1.2 core schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resolved {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str,
}

impl Node {
    pub fn is_null(&self) -> bool {
        matches!(&self.kind, Kind::Scalar { text, plain: true } if resolve(text) == Resolved::Null)
    }

    /// What a person would call this node's type, for "expected X, found Y" messages.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Seq(_) => "a list".into(),
            Kind::Map(_) => "a mapping".into(),
            Kind::Scalar { text, plain } => match (plain, resolve(text)) {
                (true, Resolved::Null) => "nothing (null)".into(),
                (true, Resolved::Bool(b)) => format!("the boolean {b}"),
                (true, Resolved::Int(_)) | (true, Resolved::Float(_)) => {
                    format!("the number {text}")
                }
                _ => format!("the text {}", quote(text)),
            },
        }
    }

    fn size(&self) -> usize {
        match &self.kind {
            Kind::Scalar { .. } => 1,
            Kind::Seq(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Kind::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.size()).sum::<usize>(),
        }
    }
}

/// `text` in double quotes with control characters escaped, for messages.
pub(crate) fn quote(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars().take(200) {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    if text.chars().count() > 200 {
        out.push_str("...");
    }
    out.push('"');
    out
}

/// The core schema's resolution of a plain scalar.
pub(crate) fn resolve(text: &str) -> Resolved {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Resolved::Null,
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    let (sign, digits) = match text.as_bytes().first() {
        Some(b'-') => (-1, &text[1..]),
        Some(b'+') => (1, &text[1..]),
        _ => (1, text),
    };
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return match digits.parse::<i128>() {
            Ok(n) => Resolved::Int(sign * n),
            Err(_) => Resolved::Str,
        };
    }
    if text.len() > 2 && (text.starts_with("0x") || text.starts_with("0o")) {
        let radix = if text.as_bytes()[1] == b'x' { 16 } else { 8 };
        let body = &text[2..];
        if body.bytes().all(|b| (b as char).is_digit(radix)) {
            return match i128::from_str_radix(body, radix) {
                Ok(n) => Resolved::Int(n),
                Err(_) => Resolved::Str,
            };
        }
        return Resolved::Str;
    }
    if is_core_float(text) {
        return match text.parse::<f64>() {
            Ok(f) => Resolved::Float(f),
            Err(_) => Resolved::Str,
        };
    }
    Resolved::Str
}

/// `[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?`
fn is_core_float(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

enum Frame {
    Seq {
        pos: Pos,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        pos: Pos,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

struct Builder<'f> {
    file: &'f str,
    stack: Vec<Frame>,
    anchors: Vec<(usize, Node)>,
    nodes: usize,
    root: Option<Node>,
}

impl Builder<'_> {
    fn err(&self, pos: Pos, message: impl Into<String>) -> PolicyError {
        PolicyError::Syntax {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.col,
            message: message.into(),
        }
    }

    fn count(&mut self, n: usize, pos: Pos) -> Result<(), PolicyError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > MAX_NODES {
            return Err(self.err(
                pos,
                format!(
                    "the document has more than {MAX_NODES} values (counting what aliases copy); write a smaller policy"
                ),
            ));
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame, pos: Pos) -> Result<(), PolicyError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(self.err(
                pos,
                format!("values nest deeper than {MAX_DEPTH} levels; flatten the document"),
            ));
        }
        self.count(1, pos)?;
        self.stack.push(frame);
        Ok(())
    }

    fn push(&mut self, node: Node, anchor: usize) -> Result<(), PolicyError> {
        if anchor != 0 {
            self.anchors.push((anchor, node.clone()));
        }
        match self.stack.last_mut() {
            None => self.root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { entries, key, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => match node.kind {
                    Kind::Scalar { text, .. } => {
                        *key = Some(Key {
                            text,
                            pos: node.pos,
                        })
                    }
                    _ => {
                        return Err(self.err(
                            node.pos,
                            "a mapping key must be text, not a list or a mapping",
                        ));
                    }
                },
            },
        }
        Ok(())
    }

    fn tag(&self, tag: bool, pos: Pos) -> Result<(), PolicyError> {
        if tag {
            return Err(self.err(
                pos,
                "YAML tags (`!name`) are not part of the policy schema; remove the tag",
            ));
        }
        Ok(())
    }
}

/// Parses `text` (named `file` in errors) into the root node of its one document, or
/// `None` for a document with no content.
pub(crate) fn parse(file: &str, text: &str) -> Result<Option<Node>, PolicyError> {
    let mut b = Builder {
        file,
        stack: Vec::new(),
        anchors: Vec::new(),
        nodes: 0,
        root: None,
    };
    if text.len() > MAX_BYTES {
        return Err(b.err(
            Pos { line: 1, col: 1 },
            format!(
                "the policy is {} bytes, more than the {MAX_BYTES} read; write a smaller policy",
                text.len()
            ),
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let mut documents = 0;
    while let Some(event) = parser.next_event() {
        let (event, span) = event.map_err(|e| {
            b.err(
                Pos {
                    line: e.marker().line(),
                    col: e.marker().col() + 1,
                },
                format!("not valid YAML: {}", e.info()),
            )
        })?;
        let pos = Pos::of(&span);
        match event {
            Event::Nothing | Event::StreamStart | Event::DocumentEnd => {}
            Event::StreamEnd => break,
            Event::DocumentStart(_) => {
                documents += 1;
                if documents > 1 {
                    return Err(b.err(
                        pos,
                        "a policy file holds one YAML document; remove the second `---` and what follows",
                    ));
                }
            }
            Event::Scalar(value, style, anchor, tag) => {
                b.tag(tag.is_some(), pos)?;
                b.count(1, pos)?;
                let node = Node {
                    pos,
                    kind: Kind::Scalar {
                        text: value.into_owned(),
                        plain: style == ScalarStyle::Plain,
                    },
                };
                b.push(node, anchor)?;
            }
            Event::SequenceStart(anchor, tag) => {
                b.tag(tag.is_some(), pos)?;
                b.open(
                    Frame::Seq {
                        pos,
                        anchor,
                        items: Vec::new(),
                    },
                    pos,
                )?;
            }
            Event::MappingStart(anchor, tag) => {
                b.tag(tag.is_some(), pos)?;
                b.open(
                    Frame::Map {
                        pos,
                        anchor,
                        entries: Vec::new(),
                        key: None,
                    },
                    pos,
                )?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (node, anchor) = match b.stack.pop() {
                    Some(Frame::Seq { pos, anchor, items }) => (
                        Node {
                            pos,
                            kind: Kind::Seq(items),
                        },
                        anchor,
                    ),
                    Some(Frame::Map {
                        pos,
                        anchor,
                        entries,
                        ..
                    }) => (
                        Node {
                            pos,
                            kind: Kind::Map(entries),
                        },
                        anchor,
                    ),
                    None => {
                        return Err(b.err(pos, "not valid YAML: unbalanced end of a collection"));
                    }
                };
                b.push(node, anchor)?;
            }
            Event::Alias(id) => {
                let Some(node) = b
                    .anchors
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == id)
                    .map(|(_, n)| n.clone())
                else {
                    return Err(b.err(pos, "this alias names no anchor defined before it"));
                };
                b.count(node.size(), pos)?;
                // An alias stands for a copy; keep its own position so errors in the copy
                // still point somewhere the reader can find.
                b.push(node, 0)?;
            }
        }
    }
    Ok(b.root.filter(|n| !n.is_null()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_scalars_resolve_by_the_core_schema() {
        assert_eq!(resolve("443"), Resolved::Int(443));
        assert_eq!(resolve("-2"), Resolved::Int(-2));
        assert_eq!(resolve("0x10"), Resolved::Int(16));
        assert_eq!(resolve("1.5"), Resolved::Float(1.5));
        assert_eq!(resolve("1e3"), Resolved::Float(1000.0));
        assert_eq!(resolve("true"), Resolved::Bool(true));
        assert_eq!(resolve("~"), Resolved::Null);
        assert_eq!(resolve("api.github.com"), Resolved::Str);
        assert_eq!(resolve("1.2.3.4"), Resolved::Str);
        assert_eq!(resolve("e3"), Resolved::Str);
        assert_eq!(resolve("."), Resolved::Str);
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        // The parser has its own limit for flow collections...
        let err = parse("deep.yaml", &"[".repeat(10_000)).unwrap_err();
        assert!(err.to_string().contains("recursion limit"), "{err}");
        // ...and ours catches block nesting, which it does not limit.
        let text: String = (0..100).map(|i| format!("{}k:\n", " ".repeat(i))).collect();
        let err = parse("deep.yaml", &text).unwrap_err();
        assert!(err.to_string().contains("deeper than 64"), "{err}");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse("bomb.yaml", &text).unwrap_err();
        assert!(err.to_string().contains("more than"), "{err}");
    }

    #[test]
    fn positions_are_one_based() {
        let root = parse("p.yaml", "a:\n  b: 1\n").unwrap().unwrap();
        let Kind::Map(entries) = &root.kind else {
            panic!("not a map")
        };
        let Kind::Map(inner) = &entries[0].1.kind else {
            panic!("not a map")
        };
        assert_eq!(inner[0].0.pos, Pos { line: 2, col: 3 });
    }
}
