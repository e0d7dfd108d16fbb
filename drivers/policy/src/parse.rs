//! The tree of positioned nodes to a validated [`Policy`]: every check knows the line,
//! the column and the field path of what it refuses, and stops at the first problem.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::model::*;
use crate::yaml::{self, Key, Kind, Node, Pos, Resolved, quote, resolve};
use crate::{Policy, PolicyError};

type R<T> = Result<T, PolicyError>;

const TOP: &[&str] = &[
    "version",
    "filesystem_policy",
    "landlock",
    "process",
    "network_policies",
    "network_middlewares",
];
const FILESYSTEM: &[&str] = &["include_workdir", "read_only", "read_write"];
const LANDLOCK: &[&str] = &["compatibility"];
const PROCESS: &[&str] = &["run_as_user", "run_as_group"];
const NETWORK_POLICY: &[&str] = &["name", "endpoints", "binaries"];
const BINARY: &[&str] = &["path", "harness"];
const ENDPOINT: &[&str] = &[
    "host",
    "port",
    "ports",
    "path",
    "protocol",
    "tls",
    "enforcement",
    "access",
    "rules",
    "deny_rules",
    "allowed_ips",
    "allow_encoded_slash",
    "websocket_credential_rewrite",
    "request_body_credential_rewrite",
    "allow_uninspected_credentials",
    "persisted_queries",
    "graphql_persisted_queries",
    "graphql_max_body_bytes",
    "credential_signing",
    "signing_service",
    "signing_region",
    "credential_binding",
    "json_rpc",
    "mcp",
];
/// Endpoint fields that only mean something when traffic is inspected.
const L7_ONLY: &[&str] = &[
    "path",
    "enforcement",
    "access",
    "rules",
    "deny_rules",
    "allow_encoded_slash",
    "websocket_credential_rewrite",
    "request_body_credential_rewrite",
    "persisted_queries",
    "graphql_persisted_queries",
    "graphql_max_body_bytes",
    "credential_signing",
    "signing_service",
    "signing_region",
    "json_rpc",
    "mcp",
];
const RULE: &[&str] = &["allow"];
const MATCH: &[&str] = &[
    "method",
    "path",
    "command",
    "query",
    "operation_type",
    "operation_name",
    "fields",
    "tool",
    "params",
];
const GRAPHQL_OPERATION: &[&str] = &["operation_type", "operation_name", "fields"];
const CREDENTIAL_BINDING: &[&str] = &["provider"];
const JSON_RPC: &[&str] = &["max_body_bytes"];
const MCP: &[&str] = &[
    "max_body_bytes",
    "strict_tool_names",
    "allow_all_known_mcp_methods",
];
const MIDDLEWARE: &[&str] = &[
    "name",
    "middleware",
    "order",
    "config",
    "on_error",
    "endpoints",
];
const SELECTOR: &[&str] = &["include", "exclude"];

/// Most `read_only` plus `read_write` paths, as upstream.
pub const MAX_FILESYSTEM_PATHS: usize = 256;
/// Longest filesystem path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most `network_middlewares` entries, as upstream.
pub const MAX_MIDDLEWARES: usize = 10;
/// Most `include` plus `exclude` patterns of one middleware, as upstream.
pub const MAX_SELECTOR_PATTERNS: usize = 32;

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// A user-chosen key in a path: bare when it is a simple word, quoted otherwise.
fn join_key(path: &str, key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        join(path, key)
    } else {
        format!("{path}[{}]", quote(key))
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// The fields of one mapping, checked against the names the schema allows.
struct Fields<'n> {
    pos: Pos,
    path: String,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    /// The value of `name`, unless absent or null.
    fn get(&self, name: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, v)| k.text == name && !v.is_null())
            .map(|(_, v)| v)
    }

    /// Where to point at `name`: its value when present, else the mapping.
    fn at(&self, name: &str) -> (Pos, String) {
        let pos = self.get(name).map(|n| n.pos).unwrap_or(self.pos);
        (pos, join(&self.path, name))
    }

    fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

struct Cx<'f> {
    file: &'f str,
}

impl Cx<'_> {
    fn err(&self, pos: Pos, field: &str, message: impl Into<String>) -> PolicyError {
        PolicyError::Invalid {
            file: self.file.to_string(),
            line: pos.line,
            column: pos.col,
            field: if field.is_empty() {
                "(the document)".to_string()
            } else {
                field.to_string()
            },
            message: message.into(),
        }
    }

    /// A mapping's entries with no key twice; null counts as an empty mapping.
    fn entries<'n>(&self, node: &'n Node, path: &str) -> R<&'n [(Key, Node)]> {
        match &node.kind {
            Kind::Map(entries) => {
                for (i, (key, _)) in entries.iter().enumerate() {
                    if let Some((first, _)) = entries[..i].iter().find(|(k, _)| k.text == key.text)
                    {
                        return Err(self.err(
                            key.pos,
                            &join_key(path, &key.text),
                            format!("given twice (first on line {}); keep one", first.pos.line),
                        ));
                    }
                }
                Ok(entries)
            }
            _ if node.is_null() => Ok(&[]),
            _ => Err(self.err(
                node.pos,
                path,
                format!("expected a mapping, found {}", node.describe()),
            )),
        }
    }

    fn mapping<'n>(&self, node: &'n Node, path: &str, allowed: &[&str]) -> R<Fields<'n>> {
        let entries = self.entries(node, path)?;
        for (key, _) in entries {
            if allowed.contains(&key.text.as_str()) {
                continue;
            }
            let field = join_key(path, &key.text);
            let message = if key.text == "<<" {
                "merge keys (`<<`) are not supported; write the fields out".to_string()
            } else if let Some(near) = allowed
                .iter()
                .filter(|a| edit_distance(a, &key.text) <= 2)
                .min_by_key(|a| edit_distance(a, &key.text))
            {
                format!("unknown field {}; did you mean `{near}`?", quote(&key.text))
            } else {
                format!(
                    "unknown field {}; expected one of: {}",
                    quote(&key.text),
                    allowed.join(", ")
                )
            };
            return Err(self.err(key.pos, &field, message));
        }
        Ok(Fields {
            pos: node.pos,
            path: path.to_string(),
            entries,
        })
    }

    fn text(&self, node: &Node, path: &str) -> R<String> {
        match &node.kind {
            Kind::Scalar { text, .. } if !node.is_null() => Ok(text.clone()),
            _ => Err(self.err(
                node.pos,
                path,
                format!("expected text, found {}", node.describe()),
            )),
        }
    }

    /// Optional text; an empty string counts as absent, as upstream.
    fn opt_text(&self, f: &Fields, name: &str) -> R<Option<String>> {
        match f.get(name) {
            None => Ok(None),
            Some(n) => {
                let t = self.text(n, &join(&f.path, name))?;
                Ok((!t.is_empty()).then_some(t))
            }
        }
    }

    fn boolean(&self, node: &Node, path: &str) -> R<bool> {
        if let Kind::Scalar { text, plain: true } = &node.kind
            && let Resolved::Bool(b) = resolve(text)
        {
            return Ok(b);
        }
        Err(self.err(
            node.pos,
            path,
            format!("expected true or false, found {}", node.describe()),
        ))
    }

    fn opt_bool(&self, f: &Fields, name: &str) -> R<Option<bool>> {
        f.get(name)
            .map(|n| self.boolean(n, &join(&f.path, name)))
            .transpose()
    }

    fn integer(&self, node: &Node, path: &str, what: &str) -> R<i128> {
        if let Kind::Scalar { text, plain: true } = &node.kind
            && let Resolved::Int(n) = resolve(text)
        {
            return Ok(n);
        }
        Err(self.err(
            node.pos,
            path,
            format!("expected {what}, found {}", node.describe()),
        ))
    }

    fn body_limit(&self, f: &Fields, name: &str) -> R<Option<u32>> {
        let Some(node) = f.get(name) else {
            return Ok(None);
        };
        let path = join(&f.path, name);
        let n = self.integer(node, &path, "a number of bytes")?;
        match u32::try_from(n) {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(self.err(
                node.pos,
                &path,
                format!(
                    "{n} is not a byte limit (1-{}); leave it out for the default",
                    u32::MAX
                ),
            )),
        }
    }

    fn list<'n>(&self, node: &'n Node, path: &str) -> R<&'n [Node]> {
        match &node.kind {
            Kind::Seq(items) => Ok(items),
            _ if node.is_null() => Ok(&[]),
            _ => Err(self.err(
                node.pos,
                path,
                format!("expected a list, found {}", node.describe()),
            )),
        }
    }

    fn texts(&self, node: &Node, path: &str) -> R<Vec<String>> {
        self.list(node, path)?
            .iter()
            .enumerate()
            .map(|(i, n)| self.text(n, &index(path, i)))
            .collect()
    }

    fn keyword<T>(
        &self,
        f: &Fields,
        name: &str,
        from: fn(&str) -> Option<T>,
        expected: fn() -> String,
    ) -> R<Option<T>> {
        let Some(node) = f.get(name) else {
            return Ok(None);
        };
        let path = join(&f.path, name);
        let text = self.text(node, &path)?;
        if text.is_empty() {
            return Ok(None);
        }
        from(&text).map(Some).ok_or_else(|| {
            self.err(
                node.pos,
                &path,
                format!("{} is not one of: {}", quote(&text), expected()),
            )
        })
    }
}

pub(crate) fn policy(file: &str, text: &str) -> R<Policy> {
    let cx = Cx { file };
    let Some(root) = yaml::parse(file, text)? else {
        return Err(PolicyError::Syntax {
            file: file.to_string(),
            line: 1,
            column: 1,
            message: "the policy is empty; a policy starts with `version: 1`".into(),
        });
    };
    let f = cx.mapping(&root, "", TOP)?;
    match f.get("version") {
        None => {
            return Err(cx.err(
                root.pos,
                "version",
                "missing; a policy starts with `version: 1`",
            ));
        }
        Some(n) => {
            let v = cx.integer(n, "version", "the schema version 1")?;
            if v != 1 {
                return Err(cx.err(
                    n.pos,
                    "version",
                    format!("version {v} is not supported; write `version: 1`"),
                ));
            }
        }
    }
    let statics = StaticPolicy {
        filesystem: f
            .get("filesystem_policy")
            .map(|n| filesystem(&cx, n))
            .transpose()?,
        landlock: f.get("landlock").map(|n| landlock(&cx, n)).transpose()?,
        process: f.get("process").map(|n| process(&cx, n)).transpose()?,
    };
    let mut dynamic = DynamicPolicy::default();
    if let Some(node) = f.get("network_policies") {
        for (key, value) in cx.entries(node, "network_policies")? {
            let path = join_key("network_policies", &key.text);
            if key.text.is_empty() {
                return Err(cx.err(key.pos, &path, "an entry needs a non-empty key"));
            }
            dynamic
                .network_policies
                .insert(key.text.clone(), network_policy(&cx, value, &path)?);
        }
    }
    if let Some(node) = f.get("network_middlewares") {
        dynamic.network_middlewares = middlewares(&cx, node)?;
    }
    Ok(Policy::from_validated(statics, dynamic))
}

/// `/a//b/./c/` to `/a/b/c`; `..` and relative paths are refused.
fn normalize_path(path: &str) -> Result<String, String> {
    if path.is_empty() {
        return Err("an empty path; write an absolute path such as /usr".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "the path is {} bytes, more than {MAX_PATH_BYTES}",
            path.len()
        ));
    }
    if path.contains('\0') {
        return Err("a path cannot contain a NUL character".into());
    }
    if !path.starts_with('/') {
        return Err(format!(
            "{} is not absolute; write it from the root, as /{}",
            quote(path),
            path.trim_start_matches("./")
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{} climbs with `..`; write the path it means without `..`",
                    quote(path)
                ));
            }
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

fn filesystem(cx: &Cx, node: &Node) -> R<FilesystemPolicy> {
    let path = "filesystem_policy";
    let f = cx.mapping(node, path, FILESYSTEM)?;
    let mut fs = FilesystemPolicy {
        include_workdir: cx.opt_bool(&f, "include_workdir")?.unwrap_or(false),
        ..FilesystemPolicy::default()
    };
    // Where each read-only path was written, to name it when read_write repeats it.
    let mut read_only_at: BTreeMap<String, (String, usize)> = BTreeMap::new();
    let mut count = 0;
    for (name, writable) in [("read_only", false), ("read_write", true)] {
        let Some(list) = f.get(name) else { continue };
        let list_path = join(path, name);
        for (i, item) in cx.list(list, &list_path)?.iter().enumerate() {
            let item_path = index(&list_path, i);
            let raw = cx.text(item, &item_path)?;
            let p = normalize_path(&raw).map_err(|m| cx.err(item.pos, &item_path, m))?;
            count += 1;
            if count > MAX_FILESYSTEM_PATHS {
                return Err(cx.err(
                    item.pos,
                    &item_path,
                    format!(
                        "more than {MAX_FILESYSTEM_PATHS} paths in read_only and read_write; list parent directories instead"
                    ),
                ));
            }
            if !writable {
                read_only_at
                    .entry(p.clone())
                    .or_insert((item_path, item.pos.line));
                fs.read_only.insert(p);
                continue;
            }
            if p == "/" {
                return Err(cx.err(
                    item.pos,
                    &item_path,
                    "`/` read-write would let the workload write everywhere; list the directories it needs",
                ));
            }
            if let Some((other, line)) = read_only_at.get(&p) {
                return Err(cx.err(
                    item.pos,
                    &item_path,
                    format!(
                        "{} is also read-only ({other}, line {line}); list it in one of the two",
                        quote(&p)
                    ),
                ));
            }
            fs.read_write.insert(p);
        }
    }
    Ok(fs)
}

fn landlock(cx: &Cx, node: &Node) -> R<LandlockPolicy> {
    let f = cx.mapping(node, "landlock", LANDLOCK)?;
    Ok(LandlockPolicy {
        compatibility: cx
            .keyword(
                &f,
                "compatibility",
                LandlockCompatibility::from_text,
                LandlockCompatibility::expected,
            )?
            .unwrap_or(LandlockCompatibility::BestEffort),
    })
}

fn process(cx: &Cx, node: &Node) -> R<ProcessPolicy> {
    let f = cx.mapping(node, "process", PROCESS)?;
    let mut p = ProcessPolicy::default();
    for name in PROCESS {
        let Some(text) = cx.opt_text(&f, name)? else {
            continue;
        };
        let (pos, path) = f.at(name);
        let id = identity(&text).map_err(|m| cx.err(pos, &path, m))?;
        if *name == "run_as_user" {
            p.run_as_user = Some(id);
        } else {
            p.run_as_group = Some(id);
        }
    }
    Ok(p)
}

const ROOT_FIX: &str = "the workload never runs as root; name an unprivileged user or group such as `sandbox`, or an id from 1 to 4294967294";

fn identity(text: &str) -> Result<Identity, String> {
    if text.bytes().all(|b| b.is_ascii_digit()) {
        let id = text.parse::<u32>();
        if text.len() > 1 && text.starts_with('0') && id != Ok(0) {
            return Err(format!(
                "{} has a leading zero; write the id as {}",
                quote(text),
                text.trim_start_matches('0')
            ));
        }
        return match id {
            Ok(0) => Err(format!("0 is root: {ROOT_FIX}")),
            Ok(u32::MAX) => Err(format!(
                "4294967295 is the kernel's \"no id\" value: {ROOT_FIX}"
            )),
            Ok(id) => Ok(Identity::Id(id)),
            Err(_) => Err(format!("{text} is not an id: {ROOT_FIX}")),
        };
    }
    if text == "root" {
        return Err(format!("`root` is root: {ROOT_FIX}"));
    }
    let valid = text.len() <= 32
        && !text.starts_with('-')
        && text
            .trim_end_matches('$')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !text.trim_end_matches('$').is_empty();
    if !valid {
        return Err(format!(
            "{} is not a user or group name (letters, digits, `_`, `-`, `.`, at most 32); name one the image has, or an id",
            quote(text)
        ));
    }
    Ok(Identity::Name(text.to_string()))
}

fn network_policy(cx: &Cx, node: &Node, path: &str) -> R<NetworkPolicy> {
    let f = cx.mapping(node, path, NETWORK_POLICY)?;
    let mut np = NetworkPolicy {
        name: cx.opt_text(&f, "name")?,
        ..NetworkPolicy::default()
    };
    let endpoints_path = join(path, "endpoints");
    let endpoints = match f.get("endpoints") {
        Some(n) => cx.list(n, &endpoints_path)?,
        None => &[],
    };
    if endpoints.is_empty() {
        let (pos, field) = f.at("endpoints");
        return Err(cx.err(
            pos,
            &field,
            "the entry allows nothing; list at least one endpoint ({host, port}) or remove the entry",
        ));
    }
    for (i, e) in endpoints.iter().enumerate() {
        np.endpoints
            .push(endpoint(cx, e, &index(&endpoints_path, i))?);
    }
    if let Some(list) = f.get("binaries") {
        let list_path = join(path, "binaries");
        for (i, b) in cx.list(list, &list_path)?.iter().enumerate() {
            let bpath = index(&list_path, i);
            let bf = cx.mapping(b, &bpath, BINARY)?;
            // `harness` is deprecated upstream and ignored; accepted so old files load.
            cx.opt_bool(&bf, "harness")?;
            let Some(p) = cx.opt_text(&bf, "path")? else {
                let (pos, field) = bf.at("path");
                return Err(cx.err(
                    pos,
                    &field,
                    "missing; a binary is `{path: /usr/bin/tool}` (globs like /usr/bin/* are allowed)",
                ));
            };
            if !p.starts_with('/') {
                let (pos, field) = bf.at("path");
                return Err(cx.err(
                    pos,
                    &field,
                    format!(
                        "{} is not absolute; write the executable's full path or a glob from /",
                        quote(&p)
                    ),
                ));
            }
            np.binaries.insert(p);
        }
    }
    Ok(np)
}

/// Checks a host and returns it in lower case.
fn host(text: &str) -> Result<String, String> {
    if text.trim() != text {
        return Err(format!("{} has spaces around it; remove them", quote(text)));
    }
    let host = text.to_ascii_lowercase();
    if let Ok(addr) = host.parse::<IpAddr>() {
        // One spelling per address: `::FFFF:1.2.3.4` and `::ffff:102:304` are the same.
        return Ok(addr.to_string());
    }
    if host == "*" || host == "**" {
        return Err(format!(
            "{} would match every host; name the domain, as *.example.com",
            quote(text)
        ));
    }
    if host.ends_with('.') {
        return Err(format!(
            "{} ends with a dot; write it without the trailing dot",
            quote(text)
        ));
    }
    if host.len() > 253 {
        return Err("a host name is at most 253 characters".into());
    }
    let labels: Vec<&str> = host.split('.').collect();
    for label in &labels {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "{} is not a host name (each dot-separated label has 1 to 63 characters)",
                quote(text)
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        {
            return Err(format!(
                "{} is not a host name (letters, digits, `-`, `_`, and `*` in the first label)",
                quote(text)
            ));
        }
    }
    if let Some(n) = labels.iter().skip(1).position(|l| l.contains('*')) {
        return Err(format!(
            "{} has a wildcard in label {}; a wildcard is allowed only in the first label, as *.example.com",
            quote(text),
            n + 2
        ));
    }
    let first = labels[0];
    if first.contains("**") && first != "**" {
        return Err(format!(
            "{}: `**` must be the whole first label, as **.example.com",
            quote(text)
        ));
    }
    if first.contains('*') && labels.len() <= 2 {
        return Err(format!(
            "{} would match a whole top-level domain; name the domain, as *.example.com",
            quote(text)
        ));
    }
    Ok(host)
}

/// Ranges the proxy never connects to, so an allowlist entry overlapping one is a mistake.
const FORBIDDEN_RANGES: &[(&str, &str)] = &[
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("0.0.0.0/32", "the unspecified address"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("::/128", "the unspecified address"),
    ("::ffff:127.0.0.0/104", "loopback"),
    ("::ffff:169.254.0.0/112", "link-local"),
    ("::ffff:0.0.0.0/128", "the unspecified address"),
];

/// The first and last address of a range, as numbers in one space per family.
fn bounds(addr: IpAddr, prefix: u8) -> (bool, u128, u128) {
    let (v6, bits, n) = match addr {
        IpAddr::V4(a) => (false, 32u32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, 128u32, u128::from(a)),
    };
    let host_bits = bits - u32::from(prefix);
    let mask = if host_bits >= 128 {
        0
    } else {
        (u128::MAX << host_bits)
            & (if bits == 32 {
                u128::from(u32::MAX)
            } else {
                u128::MAX
            })
    };
    let start = n & mask;
    let span = if host_bits >= 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (v6, start, start | span)
}

fn ip_range(text: &str) -> Result<IpRange, String> {
    let bad = || {
        format!(
            "{} is not an IP address or CIDR range (as 10.0.0.0/8)",
            quote(text)
        )
    };
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => return Err(bad()),
            }
        }
        Some(_) => return Err(bad()),
    };
    let (v6, start, end) = bounds(addr, prefix);
    for (range, what) in FORBIDDEN_RANGES {
        let Some((a, p)) = range.split_once('/') else {
            continue;
        };
        let (Ok(a), Ok(p)) = (a.parse::<IpAddr>(), p.parse::<u8>()) else {
            continue;
        };
        let (fv6, fstart, fend) = bounds(a, p);
        if fv6 == v6 && start <= fend && fstart <= end {
            return Err(format!(
                "{} overlaps {what} ({range}), which the proxy never connects to; narrow the range or remove it",
                quote(text)
            ));
        }
    }
    let addr = match addr {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from(start as u32)),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(start)),
    };
    Ok(IpRange {
        addr,
        prefix: (prefix != max).then_some(prefix),
    })
}

fn port(cx: &Cx, node: &Node, path: &str) -> R<u16> {
    let n = cx.integer(node, path, "a port number (1-65535)")?;
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(cx.err(node.pos, path, format!("{n} is not a port (1-65535)"))),
    }
}

fn endpoint(cx: &Cx, node: &Node, path: &str) -> R<Endpoint> {
    let f = cx.mapping(node, path, ENDPOINT)?;
    let mut e = Endpoint {
        protocol: match f.get("protocol") {
            None => None,
            Some(n) => {
                let p = join(path, "protocol");
                let t = cx.text(n, &p)?;
                if t.is_empty() {
                    None
                } else {
                    Some(Protocol::from_text(&t.to_ascii_lowercase()).ok_or_else(|| {
                        cx.err(
                            n.pos,
                            &p,
                            format!(
                                "unknown protocol {}; expected one of: {}",
                                quote(&t),
                                Protocol::expected()
                            ),
                        )
                    })?)
                }
            }
        },
        ..Endpoint::default()
    };
    let tcp = e.protocol == Some(Protocol::Tcp);

    if let Some(h) = cx.opt_text(&f, "host")? {
        let (pos, field) = f.at("host");
        let h = host(&h).map_err(|m| cx.err(pos, &field, m))?;
        if tcp && h.parse::<IpAddr>().is_ok() {
            return Err(cx.err(
                pos,
                &field,
                "protocol tcp needs a DNS host name, not an IP address (connections to addresses bypass policy DNS); name the host",
            ));
        }
        e.host = Some(h);
    }

    match (f.get("port"), f.get("ports")) {
        (Some(_), Some(n)) => {
            return Err(cx.err(
                n.pos,
                &join(path, "ports"),
                "set either port or ports, not both",
            ));
        }
        (Some(n), None) => {
            e.ports.insert(port(cx, n, &join(path, "port"))?);
        }
        (None, Some(n)) => {
            let p = join(path, "ports");
            for (i, item) in cx.list(n, &p)?.iter().enumerate() {
                e.ports.insert(port(cx, item, &index(&p, i))?);
            }
            if e.ports.is_empty() {
                return Err(cx.err(n.pos, &p, "the list is empty; list at least one port"));
            }
        }
        (None, None) => {
            return Err(cx.err(
                f.pos,
                &join(path, "port"),
                "missing; every endpoint needs a port (1-65535)",
            ));
        }
    }

    if let Some(p) = cx.opt_text(&f, "path")? {
        if !p.starts_with('/') && p != "**" {
            let (pos, field) = f.at("path");
            return Err(cx.err(
                pos,
                &field,
                format!("{} must start with `/` or be `**`", quote(&p)),
            ));
        }
        e.path = Some(p);
    }
    e.tls = cx.keyword(&f, "tls", TlsMode::from_text, TlsMode::expected)?;
    e.enforcement = cx.keyword(
        &f,
        "enforcement",
        Enforcement::from_text,
        Enforcement::expected,
    )?;
    e.access = cx.keyword(&f, "access", Access::from_text, Access::expected)?;

    if let Some(n) = f.get("rules") {
        let p = join(path, "rules");
        let items = cx.list(n, &p)?;
        if items.is_empty() {
            return Err(cx.err(
                n.pos,
                &p,
                "`rules: []` allows nothing; list allow rules, or use `access: full` instead",
            ));
        }
        for (i, item) in items.iter().enumerate() {
            let rp = index(&p, i);
            let rf = cx.mapping(item, &rp, RULE)?;
            let ap = join(&rp, "allow");
            let allow = match rf.entries.iter().find(|(k, _)| k.text == "allow") {
                Some((_, a)) => l7_match(cx, a, &ap)?,
                None => {
                    return Err(cx.err(
                        item.pos,
                        &ap,
                        "missing; a rule is `allow: {method: GET, path: /**}`",
                    ));
                }
            };
            e.rules.push(allow);
        }
    }
    if let Some(n) = f.get("deny_rules") {
        let p = join(path, "deny_rules");
        let items = cx.list(n, &p)?;
        if items.is_empty() {
            return Err(cx.err(n.pos, &p, "`deny_rules: []` denies nothing; remove it"));
        }
        for (i, item) in items.iter().enumerate() {
            e.deny_rules.push(l7_match(cx, item, &index(&p, i))?);
        }
    }
    if let Some(n) = f.get("allowed_ips") {
        let p = join(path, "allowed_ips");
        for (i, item) in cx.list(n, &p)?.iter().enumerate() {
            let ip = index(&p, i);
            let t = cx.text(item, &ip)?;
            e.allowed_ips
                .insert(ip_range(&t).map_err(|m| cx.err(item.pos, &ip, m))?);
        }
    }
    e.allow_encoded_slash = cx.opt_bool(&f, "allow_encoded_slash")?.unwrap_or(false);
    e.websocket_credential_rewrite = cx
        .opt_bool(&f, "websocket_credential_rewrite")?
        .unwrap_or(false);
    e.request_body_credential_rewrite = cx
        .opt_bool(&f, "request_body_credential_rewrite")?
        .unwrap_or(false);
    e.allow_uninspected_credentials = cx
        .opt_bool(&f, "allow_uninspected_credentials")?
        .unwrap_or(false);
    e.persisted_queries = cx.keyword(
        &f,
        "persisted_queries",
        PersistedQueries::from_text,
        PersistedQueries::expected,
    )?;
    if let Some(n) = f.get("graphql_persisted_queries") {
        let p = join(path, "graphql_persisted_queries");
        for (key, value) in cx.entries(n, &p)? {
            let kp = join_key(&p, &key.text);
            let of = cx.mapping(value, &kp, GRAPHQL_OPERATION)?;
            let Some(operation_type) = cx.opt_text(&of, "operation_type")? else {
                let (pos, field) = of.at("operation_type");
                return Err(cx.err(
                    pos,
                    &field,
                    "missing; name the operation type: query, mutation or subscription",
                ));
            };
            let fields = match of.get("fields") {
                Some(n) => cx.texts(n, &join(&kp, "fields"))?,
                None => Vec::new(),
            };
            e.graphql_persisted_queries.insert(
                key.text.clone(),
                GraphqlOperation {
                    operation_type,
                    operation_name: cx.opt_text(&of, "operation_name")?,
                    fields,
                },
            );
        }
    }
    e.graphql_max_body_bytes = cx.body_limit(&f, "graphql_max_body_bytes")?;
    e.credential_signing = cx.keyword(
        &f,
        "credential_signing",
        CredentialSigning::from_text,
        CredentialSigning::expected,
    )?;
    e.signing_service = cx.opt_text(&f, "signing_service")?;
    e.signing_region = cx.opt_text(&f, "signing_region")?;
    if let Some(n) = f.get("credential_binding") {
        let p = join(path, "credential_binding");
        let bf = cx.mapping(n, &p, CREDENTIAL_BINDING)?;
        let Some(provider) = cx.opt_text(&bf, "provider")? else {
            let (pos, field) = bf.at("provider");
            return Err(cx.err(
                pos,
                &field,
                "missing; name the attached provider whose credentials this endpoint gets",
            ));
        };
        e.credential_binding = Some(CredentialBinding { provider });
    }
    if let Some(n) = f.get("json_rpc") {
        let jf = cx.mapping(n, &join(path, "json_rpc"), JSON_RPC)?;
        e.json_rpc = Some(JsonRpcOptions {
            max_body_bytes: cx.body_limit(&jf, "max_body_bytes")?,
        });
    }
    if let Some(n) = f.get("mcp") {
        let mf = cx.mapping(n, &join(path, "mcp"), MCP)?;
        e.mcp = Some(McpOptions {
            max_body_bytes: cx.body_limit(&mf, "max_body_bytes")?,
            strict_tool_names: cx.opt_bool(&mf, "strict_tool_names")?,
            allow_all_known_mcp_methods: cx.opt_bool(&mf, "allow_all_known_mcp_methods")?,
        });
    }
    endpoint_semantics(cx, &f, &e)?;
    Ok(e)
}

/// The contradictions between an endpoint's fields, in upstream's order.
fn endpoint_semantics(cx: &Cx, f: &Fields, e: &Endpoint) -> R<()> {
    let fail = |name: &str, message: String| {
        let (pos, field) = f.at(name);
        Err(cx.err(pos, &field, message))
    };
    let protocol = e.protocol;
    let tcp = protocol == Some(Protocol::Tcp);
    let l7 = protocol.filter(|p| p.is_l7());
    let mcp = protocol == Some(Protocol::Mcp);
    let json_rpc = protocol == Some(Protocol::JsonRpc);
    let has_rules = !e.rules.is_empty();
    let has_access = e.access.is_some();
    let mcp_allow_all = e
        .mcp
        .as_ref()
        .and_then(|m| m.allow_all_known_mcp_methods)
        .unwrap_or(false);

    if e.host.is_none() {
        if tcp {
            return fail(
                "host",
                "missing; protocol tcp needs a DNS host name (hostless allowed_ips endpoints work only through the forward proxy)".into(),
            );
        }
        if e.allowed_ips.is_empty() {
            return fail(
                "host",
                "missing; an endpoint needs a host, or allowed_ips to constrain a hostless one"
                    .into(),
            );
        }
    }
    if tcp && let Some(name) = L7_ONLY.iter().find(|n| f.has(n)) {
        return fail(
            name,
            format!(
                "protocol tcp does not inspect traffic, so `{name}` means nothing; remove it or choose an inspected protocol"
            ),
        );
    }
    if has_rules && has_access {
        return fail(
            "rules",
            "`rules` and `access` exclude each other; keep one".into(),
        );
    }
    if (mcp || json_rpc) && has_access {
        let fix = if mcp {
            "use rules, or set mcp.allow_all_known_mcp_methods: true"
        } else {
            "use explicit rules with allow.method, such as \"*\""
        };
        return fail(
            "access",
            format!(
                "protocol {} does not take an access preset; {fix}",
                protocol.map(Protocol::as_str).unwrap_or_default()
            ),
        );
    }
    if json_rpc && !has_rules {
        return fail(
            "rules",
            "missing; protocol json-rpc needs explicit rules with allow.method".into(),
        );
    }
    if let Some(p) = l7
        && !mcp
        && !json_rpc
        && !has_rules
        && !has_access
    {
        return fail(
            "access",
            format!(
                "missing; protocol {p} needs `access` (read-only, read-write, full) or `rules` to say what is allowed"
            ),
        );
    }
    if mcp && !has_rules && !mcp_allow_all {
        return fail(
            "rules",
            "missing; protocol mcp needs rules unless mcp.allow_all_known_mcp_methods is true"
                .into(),
        );
    }
    if has_rules && e.rules.iter().all(L7Match::is_empty) && !(mcp && mcp_allow_all) {
        return fail(
            "rules",
            "no rule names anything to allow, so the endpoint allows nothing; give the rules a method and path, or use `access: full`".into(),
        );
    }
    if !e.deny_rules.is_empty() {
        if l7.is_none() {
            return fail(
                "deny_rules",
                format!(
                    "deny_rules need an inspected protocol; set protocol to one of: {}",
                    Protocol::ALL
                        .iter()
                        .filter(|p| p.is_l7())
                        .map(|p| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        if !mcp && !has_rules && !has_access {
            return fail(
                "deny_rules",
                "deny_rules need `rules` or `access` to deny from; add one".into(),
            );
        }
    }
    if protocol == Some(Protocol::Sql) && e.enforcement == Some(Enforcement::Enforce) {
        return fail(
            "enforcement",
            "SQL enforcement needs full SQL parsing, which does not exist yet; use `enforcement: audit`".into(),
        );
    }
    if e.mcp.is_some() && !mcp {
        return fail(
            "mcp",
            "mcp options apply only to protocol mcp; remove them or set `protocol: mcp`".into(),
        );
    }
    if protocol == Some(Protocol::Graphql) {
        let ok = |t: Option<&str>| matches!(t, Some("query" | "mutation" | "subscription" | "*"));
        for (i, r) in e.rules.iter().enumerate() {
            if !ok(r.operation_type.as_deref()) {
                let (pos, field) = f.at("rules");
                return Err(cx.err(
                    pos,
                    &format!("{field}[{i}].allow.operation_type"),
                    "protocol graphql rules need operation_type: query, mutation, subscription or *",
                ));
            }
        }
        for (i, r) in e.deny_rules.iter().enumerate() {
            if !ok(r.operation_type.as_deref()) {
                let (pos, field) = f.at("deny_rules");
                return Err(cx.err(
                    pos,
                    &format!("{field}[{i}].operation_type"),
                    "protocol graphql deny rules need operation_type: query, mutation, subscription or *",
                ));
            }
        }
        for (key, op) in &e.graphql_persisted_queries {
            if !ok(Some(&op.operation_type)) || op.operation_type == "*" {
                let (pos, field) = f.at("graphql_persisted_queries");
                return Err(cx.err(
                    pos,
                    &format!("{}.operation_type", join_key(&field, key)),
                    "a persisted query's operation_type is query, mutation or subscription",
                ));
            }
        }
    }
    if let Some(signing) = e.credential_signing {
        if e.signing_service.is_none() {
            return fail(
                "signing_service",
                format!(
                    "missing; credential_signing: {signing} needs the AWS service name, as bedrock or s3"
                ),
            );
        }
        if e.request_body_credential_rewrite {
            return fail(
                "request_body_credential_rewrite",
                "request_body_credential_rewrite and credential_signing exclude each other; keep one".into(),
            );
        }
    }
    Ok(())
}

fn l7_match(cx: &Cx, node: &Node, path: &str) -> R<L7Match> {
    let f = cx.mapping(node, path, MATCH)?;
    let mut m = L7Match {
        method: cx.opt_text(&f, "method")?,
        path: cx.opt_text(&f, "path")?,
        command: cx.opt_text(&f, "command")?,
        operation_type: cx.opt_text(&f, "operation_type")?,
        operation_name: cx.opt_text(&f, "operation_name")?,
        ..L7Match::default()
    };
    if let Some(n) = f.get("query") {
        let p = join(path, "query");
        for (key, value) in cx.entries(n, &p)? {
            m.query.insert(
                key.text.clone(),
                matcher(cx, value, &join_key(&p, &key.text))?,
            );
        }
    }
    if let Some(n) = f.get("fields") {
        m.fields = cx.texts(n, &join(path, "fields"))?;
    }
    if let Some(n) = f.get("tool") {
        m.tool = Some(matcher(cx, n, &join(path, "tool"))?);
    }
    if let Some(n) = f.get("params") {
        let p = join(path, "params");
        for (key, value) in cx.entries(n, &p)? {
            m.params.insert(
                key.text.clone(),
                param_matcher(cx, value, &join_key(&p, &key.text))?,
            );
        }
    }
    Ok(m)
}

/// `{any: [...]}` when `node` is a mapping whose one key is `any` holding a list.
fn any_list(node: &Node) -> Option<&Node> {
    match &node.kind {
        Kind::Map(entries)
            if entries.len() == 1
                && entries[0].0.text == "any"
                && matches!(entries[0].1.kind, Kind::Seq(_)) =>
        {
            Some(&entries[0].1)
        }
        _ => None,
    }
}

fn matcher(cx: &Cx, node: &Node, path: &str) -> R<Matcher> {
    if let Kind::Scalar { .. } = node.kind {
        return Ok(Matcher::Glob(cx.text(node, path)?));
    }
    let Some(list) = any_list(node) else {
        return Err(cx.err(
            node.pos,
            path,
            format!(
                "expected a glob or {{any: [globs]}}, found {}",
                node.describe()
            ),
        ));
    };
    let p = join(path, "any");
    let globs = cx.texts(list, &p)?;
    if globs.is_empty() {
        return Err(cx.err(
            list.pos,
            &p,
            "the list is empty, so nothing matches; list at least one glob",
        ));
    }
    Ok(Matcher::Any(globs))
}

fn param_matcher(cx: &Cx, node: &Node, path: &str) -> R<ParamMatcher> {
    match &node.kind {
        Kind::Scalar { .. } => Ok(ParamMatcher::Matcher(matcher(cx, node, path)?)),
        Kind::Map(_) if any_list(node).is_some() => {
            Ok(ParamMatcher::Matcher(matcher(cx, node, path)?))
        }
        Kind::Map(_) => {
            let mut out = BTreeMap::new();
            for (key, value) in cx.entries(node, path)? {
                out.insert(
                    key.text.clone(),
                    param_matcher(cx, value, &join_key(path, &key.text))?,
                );
            }
            Ok(ParamMatcher::Object(out))
        }
        Kind::Seq(_) => Err(cx.err(
            node.pos,
            path,
            "expected a glob, {any: [globs]} or a mapping of parameters, found a list",
        )),
    }
}

fn middlewares(cx: &Cx, node: &Node) -> R<BTreeMap<String, NetworkMiddleware>> {
    let path = "network_middlewares";
    let entries = cx.entries(node, path)?;
    if entries.len() > MAX_MIDDLEWARES {
        return Err(cx.err(
            node.pos,
            path,
            format!(
                "{} middlewares, more than the {MAX_MIDDLEWARES} a policy may attach; merge or remove some",
                entries.len()
            ),
        ));
    }
    let mut out = BTreeMap::new();
    let mut orders: BTreeMap<i32, &str> = BTreeMap::new();
    for (key, value) in entries {
        let p = join_key(path, &key.text);
        if key.text.is_empty() {
            return Err(cx.err(key.pos, &p, "an entry needs a non-empty key"));
        }
        let f = cx.mapping(value, &p, MIDDLEWARE)?;
        let Some(middleware) = cx.opt_text(&f, "middleware")? else {
            let (pos, field) = f.at("middleware");
            return Err(cx.err(
                pos,
                &field,
                "missing; name the middleware implementation, as openshell/regex",
            ));
        };
        let order = match f.get("order") {
            None => 0,
            Some(n) => {
                let op = join(&p, "order");
                let v = cx.integer(n, &op, "a whole number")?;
                i32::try_from(v).map_err(|_| {
                    cx.err(
                        n.pos,
                        &op,
                        format!("{v} is out of range ({} to {})", i32::MIN, i32::MAX),
                    )
                })?
            }
        };
        if let Some(other) = orders.insert(order, &key.text) {
            let (pos, field) = f.at("order");
            return Err(cx.err(
                pos,
                &field,
                format!(
                    "order {order} is also used by {}; give each middleware its own order",
                    quote(other)
                ),
            ));
        }
        let mut config = BTreeMap::new();
        if let Some(n) = f.get("config") {
            let cp = join(&p, "config");
            for (k, v) in cx.entries(n, &cp)? {
                config.insert(k.text.clone(), value_of(cx, v, &join_key(&cp, &k.text))?);
            }
        }
        let on_error = cx.keyword(&f, "on_error", OnError::from_text, OnError::expected)?;
        let Some(sel) = f.get("endpoints") else {
            let (pos, field) = f.at("endpoints");
            return Err(cx.err(
                pos,
                &field,
                "missing; select hosts with `endpoints: {include: [host globs]}`",
            ));
        };
        let sp = join(&p, "endpoints");
        let sf = cx.mapping(sel, &sp, SELECTOR)?;
        let mut patterns = [Vec::new(), Vec::new()];
        for (slot, name) in patterns.iter_mut().zip(SELECTOR) {
            if let Some(n) = sf.get(name) {
                let lp = join(&sp, name);
                for (i, item) in cx.list(n, &lp)?.iter().enumerate() {
                    let ip = index(&lp, i);
                    let t = cx.text(item, &ip)?;
                    if t.is_empty() || t.contains('{') || t.contains('}') {
                        return Err(cx.err(
                            item.pos,
                            &ip,
                            format!(
                                "{} is not a host glob (brace alternates are not supported; list each host)",
                                quote(&t)
                            ),
                        ));
                    }
                    slot.push(t.to_ascii_lowercase());
                }
            }
        }
        let [include, exclude] = patterns;
        if include.is_empty() {
            let (pos, field) = sf.at("include");
            return Err(cx.err(
                pos,
                &field,
                "missing or empty; list the host globs the middleware applies to",
            ));
        }
        if include.len() + exclude.len() > MAX_SELECTOR_PATTERNS {
            return Err(cx.err(
                sel.pos,
                &sp,
                format!(
                    "{} patterns, more than {MAX_SELECTOR_PATTERNS}; use wildcards",
                    include.len() + exclude.len()
                ),
            ));
        }
        out.insert(
            key.text.clone(),
            NetworkMiddleware {
                name: cx.opt_text(&f, "name")?,
                middleware,
                order,
                config,
                on_error,
                include,
                exclude,
            },
        );
    }
    Ok(out)
}

fn value_of(cx: &Cx, node: &Node, path: &str) -> R<Value> {
    Ok(match &node.kind {
        Kind::Scalar { text, plain: true } => match resolve(text) {
            Resolved::Null => Value::Null,
            Resolved::Bool(b) => Value::Bool(b),
            Resolved::Int(n) => Value::Int(i64::try_from(n).map_err(|_| {
                cx.err(
                    node.pos,
                    path,
                    format!("{text} does not fit in 64 bits; quote it to keep it as text"),
                )
            })?),
            Resolved::Float(x) if x.is_finite() => Value::Float(x),
            Resolved::Float(_) => {
                return Err(cx.err(
                    node.pos,
                    path,
                    format!("{text} is not a finite number; quote it to keep it as text"),
                ));
            }
            Resolved::Str => Value::String(text.clone()),
        },
        Kind::Scalar { text, .. } => Value::String(text.clone()),
        Kind::Seq(items) => Value::List(
            items
                .iter()
                .enumerate()
                .map(|(i, n)| value_of(cx, n, &index(path, i)))
                .collect::<R<_>>()?,
        ),
        Kind::Map(_) => {
            let mut out = BTreeMap::new();
            for (k, v) in cx.entries(node, path)? {
                out.insert(k.text.clone(), value_of(cx, v, &join_key(path, &k.text))?);
            }
            Value::Map(out)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalize_to_one_spelling() {
        assert_eq!(normalize_path("/usr/").unwrap(), "/usr");
        assert_eq!(normalize_path("//usr/./lib").unwrap(), "/usr/lib");
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert!(normalize_path("/usr/../etc").is_err());
        assert!(normalize_path("usr").is_err());
    }

    #[test]
    fn hosts() {
        assert_eq!(host("API.GitHub.com").unwrap(), "api.github.com");
        assert!(host("*.example.com").is_ok());
        assert!(host("**.example.com").is_ok());
        assert!(host("*-aiplatform.googleapis.com").is_ok());
        assert!(host("10.0.0.1").is_ok());
        assert!(host("*.com").is_err());
        assert!(host("*").is_err());
        assert!(host("api.*.example.com").is_err());
        assert!(host("a**.example.com").is_err());
        assert!(host("example.com.").is_err());
        assert!(host("exa mple.com").is_err());
    }

    #[test]
    fn ip_ranges() {
        assert_eq!(ip_range("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(ip_range("10.1.2.3/32").unwrap().to_string(), "10.1.2.3");
        assert_eq!(ip_range("fc00::/7").unwrap().to_string(), "fc00::/7");
        assert!(ip_range("0.0.0.0/0").is_err());
        assert!(ip_range("127.0.0.1").is_err());
        assert!(ip_range("169.254.169.254").is_err());
        assert!(ip_range("::/0").is_err());
        assert!(ip_range("10.0.0.0/33").is_err());
        assert!(ip_range("10.0.0.0/+8").is_err());
    }

    #[test]
    fn identities() {
        assert_eq!(
            identity("sandbox").unwrap(),
            Identity::Name("sandbox".into())
        );
        assert_eq!(identity("1500").unwrap(), Identity::Id(1500));
        assert!(identity("0").is_err());
        assert!(identity("root").is_err());
        assert!(identity("4294967295").is_err());
        assert!(identity("4294967296").is_err());
        assert!(identity("0100").is_err());
        assert!(identity("a b").is_err());
    }
}
