//! Policy files as people write them: OpenShell's own examples load and mean what they say,
//! mistakes are refused with the file, line, column and field, the canonical text round
//! trips, and the static/dynamic split refuses what cannot change on a running sandbox.

use std::collections::BTreeSet;
use std::path::Path;

use openshell_policy::*;

fn fixture(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    Policy::parse(name, &text).unwrap_or_else(|e| panic!("{name} refused: {e}"))
}

const FIXTURES: &[&str] = &[
    "gator.yaml",
    "local-inference.yaml",
    "middleware-content-guard.yaml",
    "multi-agent-notepad.yaml",
    "policy-advisor.yaml",
    "prover-testdata.yaml",
    "quickstart.yaml",
    "schema-reference-examples.yaml",
    "supervisor-network-testdata.yaml",
    "transparent-tcp-redis.yaml",
];

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_upstream_example_loads_and_round_trips() {
    for name in FIXTURES {
        let p = fixture(name);
        let text = p.to_canonical_yaml();
        let again = Policy::parse("canonical.yaml", &text)
            .unwrap_or_else(|e| panic!("{name}: canonical text refused: {e}\n{text}"));
        assert_eq!(
            again, p,
            "{name}: canonical text means something else\n{text}"
        );
        assert_eq!(
            again.to_canonical_yaml(),
            text,
            "{name}: canonical text moved"
        );
        assert_eq!(again.hash(), p.hash());
    }
}

#[test]
fn quickstart_means_read_only_github_for_curl() {
    let p = fixture("quickstart.yaml");
    let fs = p.statics().filesystem.as_ref().unwrap();
    assert!(fs.include_workdir);
    assert!(fs.read_only.contains("/usr") && fs.read_only.contains("/var/log"));
    assert_eq!(fs.read_write, set(&["/dev/null", "/sandbox", "/tmp"]));
    assert_eq!(
        p.statics().landlock.unwrap().compatibility,
        LandlockCompatibility::BestEffort
    );
    assert_eq!(p.statics().process, None, "omitted: the driver chooses");
    let github = &p.network().network_policies["github_api"];
    assert_eq!(github.name.as_deref(), Some("github-api-readonly"));
    let e = &github.endpoints[0];
    assert_eq!(e.host.as_deref(), Some("api.github.com"));
    assert_eq!(e.ports, [443].into());
    assert_eq!(e.protocol, Some(Protocol::Rest));
    assert_eq!(e.enforcement, Some(Enforcement::Enforce));
    assert_eq!(e.access, Some(Access::ReadOnly));
    assert_eq!(github.binaries, set(&["/usr/bin/curl"]));
}

#[test]
fn the_other_examples_mean_what_they_say() {
    let p = fixture("gator.yaml");
    let proc = p.statics().process.as_ref().unwrap();
    assert_eq!(proc.run_as_user, Some(Identity::Name("sandbox".into())));
    assert_eq!(proc.run_as_group, Some(Identity::Name("sandbox".into())));
    assert!(p.network().network_policies.is_empty());

    let p = fixture("local-inference.yaml");
    let pypi = &p.network().network_policies["pypi"];
    assert_eq!(pypi.endpoints.len(), 2);
    assert_eq!(
        pypi.endpoints[1].host.as_deref(),
        Some("files.pythonhosted.org")
    );
    assert_eq!(pypi.endpoints[1].protocol, None, "L4 passthrough");
    let nvidia = &p.network().network_policies["nvidia_direct"].endpoints[0];
    assert_eq!(nvidia.tls, Some(TlsMode::Terminate));
    assert_eq!(nvidia.access, Some(Access::Full));

    let p = fixture("policy-advisor.yaml");
    assert_eq!(p.statics(), &StaticPolicy::default());
    let anthropic = &p.network().network_policies["anthropic"];
    assert!(anthropic.binaries.is_empty());

    let p = fixture("transparent-tcp-redis.yaml");
    let redis = &p.network().network_policies["redis"];
    assert_eq!(redis.endpoints[0].protocol, Some(Protocol::Tcp));
    assert_eq!(redis.endpoints[0].ports, [6379].into());
    let ips: Vec<String> = redis.endpoints[0]
        .allowed_ips
        .iter()
        .map(|r| r.to_string())
        .collect();
    assert_eq!(ips, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
    assert_eq!(redis.binaries, set(&["/**"]));

    let p = fixture("middleware-content-guard.yaml");
    let m = &p.network().network_middlewares["prototype-content-guard"];
    assert_eq!(m.middleware, "content-guard-example");
    assert_eq!(m.order, 10);
    assert_eq!(m.on_error, Some(OnError::FailClosed));
    assert_eq!(m.include, ["httpbin.org"]);
    assert_eq!(m.config["mode"], Value::String("redact".into()));
    assert_eq!(
        m.config["terms"],
        Value::List(vec![
            Value::String("prototype-secret".into()),
            Value::String("internal-only".into())
        ])
    );
    let rule = &p.network().network_policies["httpbin"].endpoints[0].rules[0];
    assert_eq!(rule.method.as_deref(), Some("POST"));
    assert_eq!(rule.path.as_deref(), Some("/anything"));

    let p = fixture("supervisor-network-testdata.yaml");
    assert_eq!(p.network().network_policies.len(), 4);
    assert_eq!(p.network().network_policies["copilot"].endpoints.len(), 11);
    assert!(
        p.network().network_policies["copilot"]
            .binaries
            .contains("/home/*/.local/bin/copilot")
    );

    let p = fixture("schema-reference-examples.yaml");
    let proc = p.statics().process.as_ref().unwrap();
    assert_eq!(proc.run_as_user, Some(Identity::Id(1500)));
    let np = &p.network().network_policies;
    assert_eq!(
        np["gcp_storage"].endpoints[0].credential_binding,
        Some(CredentialBinding {
            provider: "work-gcp".into()
        })
    );
    assert_eq!(
        np["git_rules"].endpoints[0].rules[1].query["tag"],
        Matcher::Any(vec!["v1.*".into(), "v2.*".into()])
    );
    let mcp = &np["mcp"].endpoints[0];
    assert_eq!(mcp.mcp.as_ref().unwrap().max_body_bytes, Some(131072));
    assert_eq!(mcp.deny_rules.len(), 2);
    assert_eq!(
        mcp.rules[3].tool,
        Some(Matcher::Any(vec![
            "create_issue".into(),
            "list_issues".into()
        ]))
    );
    assert!(np["npm_registry"].endpoints[0].allow_encoded_slash);
}

#[test]
fn a_field_typo_is_refused_with_its_line() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quickstart.yaml"),
    )
    .unwrap();
    let line = text
        .lines()
        .position(|l| l.trim() == "protocol: rest")
        .unwrap()
        + 1;
    let text = text.replace("protocol: rest", "protcol: rest");
    let err = Policy::parse("policy.yaml", &text).unwrap_err();
    assert_eq!(err.line(), Some(line), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "policy.yaml:{line}:9: network_policies.github_api.endpoints[0].protcol: unknown field \"protcol\"; did you mean `protocol`?"
        )
    );
}

/// (document, expected error text). Each document is one mistake.
const REFUSED: &[(&str, &str)] = &[
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - host: api.github.com\n        port: 70000\n",
        "policy.yaml:6:15: network_policies.github.endpoints[0].port: 70000 is not a port (1-65535)",
    ),
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - {host: api.github.com, port: 0}\n",
        "policy.yaml:5:38: network_policies.github.endpoints[0].port: 0 is not a port (1-65535)",
    ),
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - {host: api.github.com, port: \"443\"}\n",
        "policy.yaml:5:38: network_policies.github.endpoints[0].port: expected a port number (1-65535), found the text \"443\"",
    ),
    (
        "version: 1\nfilesystem_policy:\n  read_only: [/usr, /tmp]\n  read_write:\n    - /tmp/\n",
        "policy.yaml:5:7: filesystem_policy.read_write[0]: \"/tmp\" is also read-only (filesystem_policy.read_only[1], line 3); list it in one of the two",
    ),
    (
        "version: 1\nprocess:\n  run_as_user: root\n",
        "policy.yaml:3:16: process.run_as_user: `root` is root: the workload never runs as root; name an unprivileged user or group such as `sandbox`, or an id from 1 to 4294967294",
    ),
    (
        "version: 1\nprocess:\n  run_as_user: sandbox\n  run_as_group: 0\n",
        "policy.yaml:4:17: process.run_as_group: 0 is root: the workload never runs as root; name an unprivileged user or group such as `sandbox`, or an id from 1 to 4294967294",
    ),
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - host: api.*.github.com\n        port: 443\n",
        "policy.yaml:5:15: network_policies.github.endpoints[0].host: \"api.*.github.com\" has a wildcard in label 2; a wildcard is allowed only in the first label, as *.example.com",
    ),
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - host: \"*.com\"\n        port: 443\n",
        "policy.yaml:5:15: network_policies.github.endpoints[0].host: \"*.com\" would match a whole top-level domain; name the domain, as *.example.com",
    ),
    (
        "version: 1\nnetwork_policies:\n  github: {}\n",
        "policy.yaml:3:11: network_policies.github.endpoints: the entry allows nothing; list at least one endpoint ({host, port}) or remove the entry",
    ),
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints: []\n    binaries: [{path: /usr/bin/gh}]\n",
        "policy.yaml:4:16: network_policies.github.endpoints: the entry allows nothing; list at least one endpoint ({host, port}) or remove the entry",
    ),
    (
        "version: 1\nfilesystem_policy:\n  include_workdir: yes\n",
        "policy.yaml:3:20: filesystem_policy.include_workdir: expected true or false, found the text \"yes\"",
    ),
    (
        "version: 1\nfilesystem_policy:\n  read_only: /usr\n",
        "policy.yaml:3:14: filesystem_policy.read_only: expected a list, found the text \"/usr\"",
    ),
    (
        "version: 1\nfilesystem_policy:\n  read_write: [/]\n",
        "policy.yaml:3:16: filesystem_policy.read_write[0]: `/` read-write would let the workload write everywhere; list the directories it needs",
    ),
    (
        "version: 1\nfilesystem_policy:\n  read_only: [usr]\n",
        "policy.yaml:3:15: filesystem_policy.read_only[0]: \"usr\" is not absolute; write it from the root, as /usr",
    ),
    (
        "version: 1\nfilesystem_policy:\n  read_only: [/usr/../etc]\n",
        "policy.yaml:3:15: filesystem_policy.read_only[0]: \"/usr/../etc\" climbs with `..`; write the path it means without `..`",
    ),
    (
        "filesystem_policy: {}\n",
        "policy.yaml:1:1: version: missing; a policy starts with `version: 1`",
    ),
    (
        "version: 2\n",
        "policy.yaml:1:10: version: version 2 is not supported; write `version: 1`",
    ),
    (
        "version: 1\nlandlock:\n  compatibility: strict\n",
        "policy.yaml:3:18: landlock.compatibility: \"strict\" is not one of: best_effort, hard_requirement",
    ),
    (
        "version: 1\nlandlock: {}\nlandlock: {}\n",
        "policy.yaml:3:1: landlock: given twice (first on line 2); keep one",
    ),
    (
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        port: 443\n        protocol: rest\n        access: full\n        rules:\n          - allow: {method: GET, path: /}\n",
        "policy.yaml:10:11: network_policies.api.endpoints[0].rules: `rules` and `access` exclude each other; keep one",
    ),
    (
        "version: 1\nnetwork_policies:\n  redis:\n    endpoints:\n      - host: redis.example.com\n        port: 6379\n        protocol: tcp\n        access: full\n",
        "policy.yaml:8:17: network_policies.redis.endpoints[0].access: protocol tcp does not inspect traffic, so `access` means nothing; remove it or choose an inspected protocol",
    ),
    (
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        port: 443\n        protocol: rest\n",
        "policy.yaml:5:9: network_policies.api.endpoints[0].access: missing; protocol rest needs `access` (read-only, read-write, full) or `rules` to say what is allowed",
    ),
    (
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        port: 443\n        deny_rules: [{method: POST, path: /}]\n",
        "policy.yaml:7:21: network_policies.api.endpoints[0].deny_rules: deny_rules need an inspected protocol; set protocol to one of: rest, websocket, graphql, sql, json-rpc, mcp",
    ),
    (
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: api.example.com\n        port: 443\n        allowed_ips: [127.0.0.1]\n",
        "policy.yaml:7:23: network_policies.api.endpoints[0].allowed_ips[0]: \"127.0.0.1\" overlaps loopback (127.0.0.0/8), which the proxy never connects to; narrow the range or remove it",
    ),
    (
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - port: 443\n",
        "policy.yaml:5:9: network_policies.api.endpoints[0].host: missing; an endpoint needs a host, or allowed_ips to constrain a hostless one",
    ),
    (
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: a.example.com\n        port: 443\n        ports: [80]\n",
        "policy.yaml:7:16: network_policies.api.endpoints[0].ports: set either port or ports, not both",
    ),
    (
        "version: 1\nnetwork_middlewares:\n  a:\n    middleware: x\n    order: 1\n    endpoints: {include: [a.com]}\n  b:\n    middleware: y\n    order: 1\n    endpoints: {include: [b.com]}\n",
        "policy.yaml:9:12: network_middlewares.b.order: order 1 is also used by \"a\"; give each middleware its own order",
    ),
    (
        "version: 1\nnetwork_policies:\n  github:\n    endpoints:\n      - host: api.github.com\n        port: 443\n    binaries: [{path: gh}]\n",
        "policy.yaml:7:23: network_policies.github.binaries[0].path: \"gh\" is not absolute; write the executable's full path or a glob from /",
    ),
    (
        "version: 1\nnetwork_policies:\n  \"my.api\":\n    endpoints:\n      - {host: api.example.com, port: 443, enforcment: audit}\n",
        "policy.yaml:5:44: network_policies[\"my.api\"].endpoints[0].enforcment: unknown field \"enforcment\"; did you mean `enforcement`?",
    ),
    (
        "version: 1\nfilesystem_policy:\n  read_only: [/usr\n",
        "policy.yaml:4:1: not valid YAML: while parsing a flow sequence, expected ',' or ']'",
    ),
    (
        "version: 1\n---\nversion: 1\n",
        "policy.yaml:2:1: a policy file holds one YAML document; remove the second `---` and what follows",
    ),
    (
        "",
        "policy.yaml:1:1: the policy is empty; a policy starts with `version: 1`",
    ),
    (
        "- version: 1\n",
        "policy.yaml:1:1: (the document): expected a mapping, found a list",
    ),
    (
        "version: !!int 1\n",
        "policy.yaml:1:10: YAML tags (`!name`) are not part of the policy schema; remove the tag",
    ),
    (
        "version: 1\nlandlock: *nothing\n",
        "policy.yaml:2:11: not valid YAML: while parsing node, found unknown anchor",
    ),
];

#[test]
fn mistakes_are_refused_with_line_column_and_field() {
    for (doc, expected) in REFUSED {
        match Policy::parse("policy.yaml", doc) {
            Ok(p) => panic!("accepted:\n{doc}\nas {p:?}"),
            Err(e) => assert_eq!(&e.to_string(), expected, "for:\n{doc}"),
        }
    }
}

#[test]
fn bytes_that_are_not_utf8_are_refused_with_their_line() {
    let err =
        Policy::parse_bytes("p.yaml", b"version: 1\nprocess:\n  run_as_user: \xff\n").unwrap_err();
    assert_eq!(
        err.to_string(),
        "p.yaml:3:16: the policy is not UTF-8 text; save it as UTF-8"
    );
}

#[test]
fn the_same_policy_however_written_hashes_the_same() {
    let block = "version: 1\n\
                 filesystem_policy:\n  read_only:\n    - /usr\n    - /etc/\n  read_write: [/tmp]\n\
                 landlock: {}\n\
                 network_policies:\n  gh:\n    endpoints:\n      - host: API.GitHub.com\n        ports: [443]\n        protocol: REST\n        access: read-only\n    binaries:\n      - path: /usr/bin/gh\n      - path: /usr/bin/git\n";
    let flow = "# the same, written otherwise\n\
                network_policies: {gh: {binaries: [{path: /usr/bin/git}, {path: /usr/bin/gh}], endpoints: [{access: read-only, port: 443, protocol: rest, host: api.github.com}]}}\n\
                landlock: {compatibility: best_effort}\n\
                filesystem_policy: {read_write: [\"/tmp\"], read_only: [/etc, //usr, /usr], include_workdir: false}\n\
                version: 1\n";
    let a = Policy::parse("a.yaml", block).unwrap();
    let b = Policy::parse("b.yaml", flow).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.hash(), b.hash());
    assert_eq!(a.to_canonical_yaml(), b.to_canonical_yaml());
    assert_eq!(a.hash().to_string().len(), 64);

    let c = Policy::parse("c.yaml", &flow.replace("read-only", "full")).unwrap();
    assert_ne!(a.hash(), c.hash());
}

#[test]
fn the_default_policy_validates_and_is_restrictive() {
    let d = Policy::default_for_sandbox();
    let text = d.to_canonical_yaml();
    let again = Policy::parse("default.yaml", &text).unwrap();
    assert_eq!(again, d);

    let fs = d.statics().filesystem.as_ref().unwrap();
    assert!(fs.include_workdir);
    for p in ["/usr", "/lib", "/etc", "/bin"] {
        assert!(fs.read_only.contains(p), "{p} read-only");
        assert!(!fs.read_write.contains(p), "{p} not writable");
    }
    assert!(fs.read_write.contains("/tmp"));
    assert!(!fs.read_write.contains("/") && !fs.read_only.contains("/"));
    assert_eq!(
        d.statics().landlock.unwrap().compatibility,
        LandlockCompatibility::BestEffort
    );
    let proc = d.statics().process.as_ref().unwrap();
    assert_eq!(proc.run_as_user, Some(Identity::Name("sandbox".into())));
    assert_eq!(proc.run_as_group, Some(Identity::Name("sandbox".into())));
    assert!(d.network().network_policies.is_empty());
    assert!(d.network().network_middlewares.is_empty());
}

#[test]
fn only_the_network_may_change_on_a_running_sandbox() {
    let base = fixture("quickstart.yaml");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quickstart.yaml"),
    )
    .unwrap();

    let network_only = Policy::parse("n.yaml", &text.replace("read-only", "full")).unwrap();
    assert_eq!(base.check_update(&network_only), Ok(()));
    assert_ne!(base.hash(), network_only.hash());

    let wider = Policy::parse(
        "w.yaml",
        &text.replace("read_write: [/sandbox,", "read_write: [/opt, /sandbox,"),
    )
    .unwrap();
    assert_eq!(
        base.static_changes(&wider),
        ["filesystem_policy.read_write"]
    );

    let mut changed = text.replace("best_effort", "hard_requirement");
    changed.push_str("process:\n  run_as_user: \"1500\"\n");
    let changed = Policy::parse("c.yaml", &changed).unwrap();
    assert_eq!(
        base.static_changes(&changed),
        ["landlock.compatibility", "process"]
    );
    let err = base.check_update(&changed).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "the new policy changes landlock.compatibility, process, which cannot change"
        ),
        "{err}"
    );
}

#[test]
fn awkward_values_survive_the_canonical_text() {
    let long_key = "k".repeat(2000);
    let doc = format!(
        "version: 1\n\
         network_middlewares:\n  \"odd key: with # and \\u0085\":\n    middleware: x\n    endpoints: {{include: [\"*.Example.com\"]}}\n    config:\n\
         \x20     nested: [[1, [2, {{a: b}}]], [], {{}}, ~, -0.0, 1e300, 0.1, 0x1f, +7, true, \"true\", '1'] \n\
         \x20     text: \"tab\\there \\r \\\" \\\\ \\u0085 \\u2028 \\ufeff \u{1f600} \\x7f\"\n\
         \x20     null: plain key\n\
         \x20     \"\": empty key\n\
         \x20     ? {long_key}\n\
         \x20     : long key\n\
         \x20     block: |\n        two\n        lines\n\
         network_policies:\n  p:\n    endpoints:\n      - host: \"::FFFF:10.1.2.3\"\n        port: 1\n        allowed_ips: [\"10.9.8.7/8\"]\n"
    );
    let p = Policy::parse("awkward.yaml", &doc).unwrap_or_else(|e| panic!("{e}"));
    let text = p.to_canonical_yaml();
    let again = Policy::parse("canonical.yaml", &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(again, p, "{text}");
    assert_eq!(again.to_canonical_yaml(), text);
    let e = &p.network().network_policies["p"].endpoints[0];
    assert_eq!(e.host.as_deref(), Some("::ffff:10.1.2.3"));
}

/// A cheap, deterministic stand-in for the fuzz target in every test run: the examples
/// with one line dropped or doubled, or one byte replaced by YAML punctuation, either
/// parse and survive their canonical text, or are refused (never a panic).
#[test]
fn mutated_examples_never_panic_and_round_trip() {
    let check = |name: &str, doc: &str| {
        if let Ok(p) = Policy::parse(name, doc) {
            let text = p.to_canonical_yaml();
            let again = Policy::parse("canonical.yaml", &text)
                .unwrap_or_else(|e| panic!("{name}: canonical text refused: {e}\n{doc}\n{text}"));
            assert_eq!(again, p, "{name}:\n{doc}\n{text}");
            assert_eq!(again.to_canonical_yaml(), text);
        }
    };
    let mut accepted = 0;
    for name in FIXTURES {
        let doc = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name),
        )
        .unwrap();
        let lines: Vec<&str> = doc.lines().collect();
        for i in 0..lines.len() {
            let mut dropped = lines.clone();
            dropped.remove(i);
            check(name, &dropped.join("\n"));
            let mut doubled = lines.clone();
            doubled.insert(i, lines[i]);
            check(name, &doubled.join("\n"));
        }
        for (i, _) in doc.char_indices().step_by(11) {
            for with in [
                " ", ":", "-", "[", "{", "\"", "*", "&a ", "*a", "#", "\t", "0",
            ] {
                let mut m = doc.clone();
                let end = doc[i..].chars().next().map_or(i, |c| i + c.len_utf8());
                m.replace_range(i..end, with);
                if Policy::parse(name, &m).is_ok() {
                    accepted += 1;
                }
                check(name, &m);
            }
        }
    }
    assert!(
        accepted > 100,
        "the mutations should not all be refused ({accepted})"
    );
}
