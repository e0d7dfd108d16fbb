//! The canonical text of a policy: the one spelling that revisions store and hash.
//!
//! Block YAML, keys sorted, every string double-quoted (with the escapes JSON and YAML
//! share, and the characters YAML forbids unescaped written as `\uXXXX`), defaults left
//! out. Two documents that parse to equal policies print the same text, so they hash the
//! same; the text parses back to an equal policy (the fuzz target checks both).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Policy;
use crate::model::*;

fn s(text: &str) -> Value {
    Value::String(text.to_string())
}

fn strings<'a>(items: impl IntoIterator<Item = &'a String>) -> Value {
    Value::List(items.into_iter().map(|t| s(t)).collect())
}

#[derive(Default)]
struct Map(BTreeMap<String, Value>);

impl Map {
    fn put(&mut self, key: &str, value: Value) -> &mut Self {
        self.0.insert(key.to_string(), value);
        self
    }
    fn opt(&mut self, key: &str, value: Option<Value>) -> &mut Self {
        if let Some(v) = value {
            self.put(key, v);
        }
        self
    }
    fn flag(&mut self, key: &str, on: bool) -> &mut Self {
        if on {
            self.put(key, Value::Bool(true));
        }
        self
    }
    fn list(&mut self, key: &str, items: Vec<Value>) -> &mut Self {
        if !items.is_empty() {
            self.put(key, Value::List(items));
        }
        self
    }
    fn done(&mut self) -> Value {
        Value::Map(std::mem::take(&mut self.0))
    }
}

fn matcher(m: &Matcher) -> Value {
    match m {
        Matcher::Glob(g) => s(g),
        Matcher::Any(globs) => Map::default().put("any", strings(globs)).done(),
    }
}

fn param_matcher(m: &ParamMatcher) -> Value {
    match m {
        ParamMatcher::Matcher(m) => matcher(m),
        ParamMatcher::Object(o) => Value::Map(
            o.iter()
                .map(|(k, v)| (k.clone(), param_matcher(v)))
                .collect(),
        ),
    }
}

fn l7_match(m: &L7Match) -> Value {
    let mut out = Map::default();
    out.opt("method", m.method.as_deref().map(s))
        .opt("path", m.path.as_deref().map(s))
        .opt("command", m.command.as_deref().map(s))
        .opt("operation_type", m.operation_type.as_deref().map(s))
        .opt("operation_name", m.operation_name.as_deref().map(s))
        .list("fields", m.fields.iter().map(|f| s(f)).collect())
        .opt("tool", m.tool.as_ref().map(matcher));
    if !m.query.is_empty() {
        out.put(
            "query",
            Value::Map(
                m.query
                    .iter()
                    .map(|(k, v)| (k.clone(), matcher(v)))
                    .collect(),
            ),
        );
    }
    if !m.params.is_empty() {
        out.put(
            "params",
            Value::Map(
                m.params
                    .iter()
                    .map(|(k, v)| (k.clone(), param_matcher(v)))
                    .collect(),
            ),
        );
    }
    out.done()
}

fn bytes(n: Option<u32>) -> Option<Value> {
    n.map(|n| Value::Int(i64::from(n)))
}

fn endpoint(e: &Endpoint) -> Value {
    let mut out = Map::default();
    out.opt("host", e.host.as_deref().map(s));
    if e.ports.len() == 1 {
        out.opt("port", e.ports.first().map(|p| Value::Int(i64::from(*p))));
    } else {
        out.list(
            "ports",
            e.ports.iter().map(|p| Value::Int(i64::from(*p))).collect(),
        );
    }
    out.opt("path", e.path.as_deref().map(s))
        .opt("protocol", e.protocol.map(|p| s(p.as_str())))
        .opt("tls", e.tls.map(|t| s(t.as_str())))
        .opt("enforcement", e.enforcement.map(|t| s(t.as_str())))
        .opt("access", e.access.map(|t| s(t.as_str())))
        .list(
            "rules",
            e.rules
                .iter()
                .map(|r| Map::default().put("allow", l7_match(r)).done())
                .collect(),
        )
        .list("deny_rules", e.deny_rules.iter().map(l7_match).collect())
        .list(
            "allowed_ips",
            e.allowed_ips.iter().map(|r| s(&r.to_string())).collect(),
        )
        .flag("allow_encoded_slash", e.allow_encoded_slash)
        .flag(
            "websocket_credential_rewrite",
            e.websocket_credential_rewrite,
        )
        .flag(
            "request_body_credential_rewrite",
            e.request_body_credential_rewrite,
        )
        .flag(
            "allow_uninspected_credentials",
            e.allow_uninspected_credentials,
        )
        .opt(
            "persisted_queries",
            e.persisted_queries.map(|t| s(t.as_str())),
        )
        .opt("graphql_max_body_bytes", bytes(e.graphql_max_body_bytes))
        .opt(
            "credential_signing",
            e.credential_signing.map(|t| s(t.as_str())),
        )
        .opt("signing_service", e.signing_service.as_deref().map(s))
        .opt("signing_region", e.signing_region.as_deref().map(s))
        .opt(
            "credential_binding",
            e.credential_binding
                .as_ref()
                .map(|b| Map::default().put("provider", s(&b.provider)).done()),
        )
        .opt(
            "json_rpc",
            e.json_rpc.as_ref().map(|j| {
                Map::default()
                    .opt("max_body_bytes", bytes(j.max_body_bytes))
                    .done()
            }),
        )
        .opt(
            "mcp",
            e.mcp.as_ref().map(|m| {
                Map::default()
                    .opt("max_body_bytes", bytes(m.max_body_bytes))
                    .opt("strict_tool_names", m.strict_tool_names.map(Value::Bool))
                    .opt(
                        "allow_all_known_mcp_methods",
                        m.allow_all_known_mcp_methods.map(Value::Bool),
                    )
                    .done()
            }),
        );
    if !e.graphql_persisted_queries.is_empty() {
        out.put(
            "graphql_persisted_queries",
            Value::Map(
                e.graphql_persisted_queries
                    .iter()
                    .map(|(k, op)| {
                        let v = Map::default()
                            .put("operation_type", s(&op.operation_type))
                            .opt("operation_name", op.operation_name.as_deref().map(s))
                            .list("fields", op.fields.iter().map(|f| s(f)).collect())
                            .done();
                        (k.clone(), v)
                    })
                    .collect(),
            ),
        );
    }
    out.done()
}

fn middleware(m: &NetworkMiddleware) -> Value {
    let mut out = Map::default();
    out.opt("name", m.name.as_deref().map(s))
        .put("middleware", s(&m.middleware))
        .opt("on_error", m.on_error.map(|o| s(o.as_str())))
        .put(
            "endpoints",
            Map::default()
                .put("include", strings(&m.include))
                .list("exclude", m.exclude.iter().map(|t| s(t)).collect())
                .done(),
        );
    if m.order != 0 {
        out.put("order", Value::Int(i64::from(m.order)));
    }
    if !m.config.is_empty() {
        out.put("config", Value::Map(m.config.clone()));
    }
    out.done()
}

pub(crate) fn to_value(policy: &Policy) -> Value {
    let statics = policy.statics();
    let dynamic = policy.network();
    let mut out = Map::default();
    out.put("version", Value::Int(1));
    if let Some(fs) = &statics.filesystem {
        out.put(
            "filesystem_policy",
            Map::default()
                .flag("include_workdir", fs.include_workdir)
                .list("read_only", fs.read_only.iter().map(|p| s(p)).collect())
                .list("read_write", fs.read_write.iter().map(|p| s(p)).collect())
                .done(),
        );
    }
    if let Some(l) = &statics.landlock {
        out.put(
            "landlock",
            Map::default()
                .put("compatibility", s(l.compatibility.as_str()))
                .done(),
        );
    }
    if let Some(p) = &statics.process {
        out.put(
            "process",
            Map::default()
                .opt(
                    "run_as_user",
                    p.run_as_user.as_ref().map(|i| s(&i.to_string())),
                )
                .opt(
                    "run_as_group",
                    p.run_as_group.as_ref().map(|i| s(&i.to_string())),
                )
                .done(),
        );
    }
    if !dynamic.network_policies.is_empty() {
        out.put(
            "network_policies",
            Value::Map(
                dynamic
                    .network_policies
                    .iter()
                    .map(|(k, np)| {
                        let v = Map::default()
                            .opt("name", np.name.as_deref().map(s))
                            .put(
                                "endpoints",
                                Value::List(np.endpoints.iter().map(endpoint).collect()),
                            )
                            .list(
                                "binaries",
                                np.binaries
                                    .iter()
                                    .map(|b| Map::default().put("path", s(b)).done())
                                    .collect(),
                            )
                            .done();
                        (k.clone(), v)
                    })
                    .collect(),
            ),
        );
    }
    if !dynamic.network_middlewares.is_empty() {
        out.put(
            "network_middlewares",
            Value::Map(
                dynamic
                    .network_middlewares
                    .iter()
                    .map(|(k, m)| (k.clone(), middleware(m)))
                    .collect(),
            ),
        );
    }
    out.done()
}

/// `text` as a double-quoted scalar that YAML and JSON read alike.
fn quoted(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            // C0 and C1 controls, DEL, the Unicode line and paragraph separators, the byte
            // order mark and the non-characters YAML does not allow in a stream.
            c if (c as u32) < 0x20
                || (0x7f..=0x9f).contains(&(c as u32))
                || matches!(
                    c,
                    '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
                ) =>
            {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn key(out: &mut String, k: &str) {
    let bare = k
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && k.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if bare {
        out.push_str(k);
    } else {
        quoted(out, k);
    }
}

/// A value that fits on the line after its key or dash.
fn inline(out: &mut String, v: &Value) -> bool {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Int(n) => {
            let _ = write!(out, "{n}");
        }
        // Debug prints the shortest text that reads back as the same f64, always with a
        // `.` or an exponent, so it reads back as a float and not an integer.
        Value::Float(x) => {
            let _ = write!(out, "{x:?}");
        }
        Value::String(t) => quoted(out, t),
        Value::List(l) if l.is_empty() => out.push_str("[]"),
        Value::Map(m) if m.is_empty() => out.push_str("{}"),
        _ => return false,
    }
    true
}

fn block(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Map(m) => {
            for (k, v) in m {
                let mut written = String::new();
                key(&mut written, k);
                out.push_str(&" ".repeat(indent));
                // YAML limits implicit keys to 1024 characters; longer ones take the
                // explicit `? key` form.
                if written.len() > 1000 {
                    out.push_str("? ");
                    out.push_str(&written);
                    out.push('\n');
                    out.push_str(&" ".repeat(indent));
                } else {
                    out.push_str(&written);
                }
                out.push(':');
                nested(out, v, indent);
            }
        }
        Value::List(l) => {
            for v in l {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                nested(out, v, indent);
            }
        }
        _ => {}
    }
}

fn nested(out: &mut String, v: &Value, indent: usize) {
    let mut line = String::new();
    if inline(&mut line, v) {
        out.push(' ');
        out.push_str(&line);
        out.push('\n');
    } else {
        out.push('\n');
        block(out, v, indent + 2);
    }
}

pub(crate) fn to_yaml(policy: &Policy) -> String {
    let mut out = String::new();
    block(&mut out, &to_value(policy), 0);
    out
}
