//! One `check(input, expected)` per boundary: text in, scrubbed text out.

use super::*;
use crashmesh_protocol::model::{ProblemKind, ThreadTrace};

fn key() -> PseudonymKey {
    PseudonymKey::from_bytes([42; pseudonym::KEY_BYTES])
}

fn scrubber() -> Scrubber {
    let config = ScrubConfig {
        hosts: vec!["node-1".into(), "node-10".into()],
        users: vec!["zelda".into()],
        ..ScrubConfig::default()
    };
    Scrubber::new(&config, key()).unwrap()
}

fn p(class: NameClass, value: &str) -> String {
    key().pseudonym(class, value)
}

/// Scrubs `input`; asserts the output and the rules counted.
fn check(input: &str, expected: &str, rules: &[&str]) {
    let mut counts = ScrubCounts::default();
    let output = scrubber().scrub_text(input, &mut counts);
    assert_eq!(output, expected, "input: {input}");
    let counted: Vec<&str> = counts.rules.keys().map(String::as_str).collect();
    let mut wanted = rules.to_vec();
    wanted.sort();
    wanted.dedup();
    assert_eq!(counted, wanted, "rules counted for {input}");
}

#[test]
fn cloud_and_service_secrets_are_removed() {
    check(
        "key AKIAIOSFODNN7EXAMPLE used",
        "key [REDACTED:aws_access_key] used",
        &["aws_access_key"],
    );
    check(
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "aws_secret_access_key = [REDACTED:aws_secret_key]",
        &["aws_secret_key"],
    );
    check(
        "gcp AIzaSyA1234567890abcdefghijklmnopqrstuv ok",
        "gcp [REDACTED:gcp_api_key] ok",
        &["gcp_api_key"],
    );
    check(
        "DefaultEndpointsProtocol=https;AccountKey=c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0==;",
        "DefaultEndpointsProtocol=https;AccountKey=[REDACTED:azure_storage_key];",
        &["azure_storage_key"],
    );
    check(
        "push ghp_abcdefghijklmnopqrstuvwxyz0123456789 done",
        "push [REDACTED:github_token] done",
        &["github_token"],
    );
    check(
        "glpat-abcdefghij0123456789 x",
        "[REDACTED:gitlab_token] x",
        &["gitlab_token"],
    );
    check(
        "slack xoxb-123456789012-abcdefghijkl",
        "slack [REDACTED:slack_token]",
        &["slack_token"],
    );
    check(
        "Authorization: Bearer abcdef0123456789abcdef.xyz",
        "Authorization: Bearer [REDACTED:secret_value]",
        &["secret_value"],
    );
    check(
        "curl -H 'X: Bearer abcdef0123456789abcdef.xyz'",
        "curl -H 'X: Bearer [REDACTED:bearer_token]'",
        &["bearer_token"],
    );
    check(
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJlc2ln",
        "jwt [REDACTED:jwt]",
        &["jwt"],
    );
    check(
        "notify hooks.slack.com/services/T0123ABCD/B0456EFGH/abcdefghijklmnop done",
        "notify [REDACTED:slack_webhook] done",
        &["slack_webhook"],
    );
    check(
        "billing sk_live_4eC39HqLyjWDarjtT1zdp7dc failed; rk_test_abcdefghij0123456789 too",
        "billing [REDACTED:stripe_key] failed; [REDACTED:stripe_key] too",
        &["stripe_key"],
    );
    check(
        "GET /c/blob?sv=2022-11-02&se=2026-12-31&sig=AbCdEfGhIjKlMnOpQrStUvWxYz0123%2B4567%3D&sp=r",
        "GET /c/blob?sv=2022-11-02&se=2026-12-31&sig=[REDACTED:azure_sas_signature]&sp=r",
        &["azure_sas_signature"],
    );
    // Too short to be a key, a webhook or a signature: left alone, but for the host name,
    // which is pseudonymized like any other.
    check(
        "sk_live_short hooks.slack.com/services/T1 ?sig=abc",
        &format!(
            "sk_live_short {}/services/T1 ?sig=abc",
            p(NameClass::Host, "hooks.slack.com")
        ),
        &["host_name"],
    );
}

#[test]
fn passwords_in_urls_and_pairs_keep_their_keys() {
    check(
        "connect postgres://app:Sup3rS3cret@127.0.0.1/db",
        "connect postgres://app:[REDACTED:url_password]@127.0.0.1/db",
        &["url_password"],
    );
    check(
        "login ok password=hunter2 retry=3",
        "login ok password=[REDACTED:secret_value] retry=3",
        &["secret_value"],
    );
    check(
        r#"{"db_password": "hunter2", "n": 1}"#,
        r#"{"db_password": [REDACTED:secret_value], "n": 1}"#,
        &["secret_value"],
    );
    check(
        r#"argv ["app.py", "--password", "hunter2"] and run app --api-key k3y"#,
        r#"argv ["app.py", "--password", "[REDACTED:secret_option]"] and run app --api-key [REDACTED:secret_option]"#,
        &["secret_option"],
    );
    check(
        "API_TOKEN: abc123",
        "API_TOKEN: [REDACTED:secret_value]",
        &["secret_value"],
    );
}

#[test]
fn pem_keys_and_card_numbers_are_removed() {
    check(
        "before\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq2+/x==\n-----END RSA PRIVATE KEY-----\nafter",
        "before\n[REDACTED:pem_private_key]\nafter",
        &["pem_private_key"],
    );
    check(
        "paid with 4111 1111 1111 1111 today",
        "paid with [REDACTED:credit_card] today",
        &["credit_card"],
    );
    // A number that fails the Luhn check stays.
    check(
        "order 4111 1111 1111 1112",
        "order 4111 1111 1111 1112",
        &[],
    );
}

#[test]
fn names_become_stable_pseudonyms() {
    let ip = p(NameClass::Ip, "10.1.2.3");
    check(
        "peer 10.1.2.3 and 10.1.2.3 and 127.0.0.1",
        &format!("peer {ip} and {ip} and 127.0.0.1"),
        &["ipv4_address"],
    );
    check(
        "from 2001:db8::8a2e:370:7334 at 12:30:45",
        &format!(
            "from {} at 12:30:45",
            p(NameClass::Ip, "2001:db8::8a2e:370:7334")
        ),
        &["ipv6_address"],
    );
    check(
        "link 52:54:00:ab:cd:ef up",
        &format!("link {} up", p(NameClass::Mac, "52:54:00:ab:cd:ef")),
        &["mac_address"],
    );
    check(
        "mail alice@example.com now",
        &format!("mail {} now", p(NameClass::Email, "alice@example.com")),
        &["email"],
    );
    check(
        "open /home/alice/.ssh/config",
        &format!("open /home/{}/.ssh/config", p(NameClass::User, "alice")),
        &["home_path"],
    );
    check(
        "sshd: Accepted key for user bob from",
        &format!(
            "sshd: Accepted key for user {} from",
            p(NameClass::User, "bob")
        ),
        &["user_name"],
    );
    check(
        "resolving db1.corp.example.com",
        &format!("resolving {}", p(NameClass::Host, "db1.corp.example.com")),
        &["host_name"],
    );
    check(
        "Nov 26 12:00:01 stor07 osd[42]: slow op",
        &format!(
            "Nov 26 12:00:01 {} osd[42]: slow op",
            p(NameClass::Host, "stor07")
        ),
        &["syslog_host"],
    );
    check(
        "node-1 and node-10 and node-100 by zelda",
        &format!(
            "{} and {} and node-100 by {}",
            p(NameClass::Host, "node-1"),
            p(NameClass::Host, "node-10"),
            p(NameClass::User, "zelda")
        ),
        &["known_host", "known_user"],
    );
}

#[test]
fn plain_text_and_code_names_are_left_alone() {
    for text in [
        "SIGSEGV in store_reading",
        "libc.so.6 std::vector<int>::push_back dead::beef",
        "version 5.14.0-362.el9.x86_64 took 12:30:45.123",
        "user space and token bucket, access-token refreshed",
    ] {
        check(text, text, &[]);
    }
}

#[test]
fn extra_patterns_come_first_and_bad_ones_are_named() {
    let config = ScrubConfig {
        extra_patterns: vec![ExtraPattern {
            name: "ticket".into(),
            pattern: r"TICKET-(?P<v>\d+)".into(),
            action: "redact".into(),
        }],
        ..ScrubConfig::default()
    };
    let scrubber = Scrubber::new(&config, key()).unwrap();
    let mut counts = ScrubCounts::default();
    assert_eq!(
        scrubber.scrub_text("see TICKET-1234", &mut counts),
        "see TICKET-[REDACTED:ticket]"
    );
    assert_eq!(counts.rules["ticket"], 1);
    let bad = ScrubConfig {
        extra_patterns: vec![ExtraPattern {
            name: "broken".into(),
            pattern: "(".into(),
            action: "redact".into(),
        }],
        ..ScrubConfig::default()
    };
    assert!(matches!(
        Scrubber::new(&bad, key()),
        Err(PrivacyError::BadRule { name, .. }) if name == "broken"
    ));
}

#[test]
fn environ_keeps_only_allowlisted_values() {
    let environ = b"PATH=/usr/bin\0AWS_SECRET_ACCESS_KEY=canary-env-secret\0HOME=/home/alice\0LC_ALL=C\0EMPTY=\0";
    let mut counts = ScrubCounts::default();
    let out = scrubber().scrub_environ(environ, &mut counts);
    let expected = format!(
        "PATH=/usr/bin\0AWS_SECRET_ACCESS_KEY=[REDACTED:env_value]\0HOME=/home/{}\0LC_ALL=C\0EMPTY=\0",
        p(NameClass::User, "alice")
    );
    assert_eq!(String::from_utf8(out).unwrap(), expected);
    assert_eq!(counts.rules["env_value"], 1);
    assert_eq!(counts.rules["home_path"], 1);
}

#[test]
fn cmdline_removes_the_argument_after_a_secret_option() {
    let mut counts = ScrubCounts::default();
    let out = scrubber().scrub_cmdline(
        b"/usr/bin/app\0--password\0canary-cli\0--token=canary-tok\0-v\0",
        &mut counts,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "/usr/bin/app\0--password\0[REDACTED:secret_argument]\0--token=[REDACTED:secret_value]\0-v\0"
    );
    assert_eq!(
        scrubber().scrub_command_text("app --api-key k3y -x", &mut counts),
        "app --api-key [REDACTED:secret_argument] -x"
    );
}

#[test]
fn the_line_scrubber_gives_the_same_bytes_whatever_the_pieces() {
    let log = "Nov 26 12:00:01 stor07 osd[42]: peer 10.0.0.7 password=canary1\n\
               -----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\nkqhkiG9w0BAQEF\n-----END PRIVATE KEY-----\n\
               Nov 26 12:00:02 stor07 osd[42]: user=alice mail bob@example.org\nno newline at end";
    let scrubber = scrubber();
    let mut whole_counts = ScrubCounts::default();
    let whole = scrubber.scrub_bytes(log.as_bytes(), &mut whole_counts);
    for piece_bytes in [1, 3, 7, 16, 50, 4096] {
        let mut lines = scrubber.lines();
        let mut out = Vec::new();
        for piece in log.as_bytes().chunks(piece_bytes) {
            lines.push(piece, &mut out);
        }
        let counts = lines.finish(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&whole),
            "pieces of {piece_bytes}"
        );
        assert_eq!(counts, whole_counts, "pieces of {piece_bytes}");
    }
    let text = String::from_utf8(whole).unwrap();
    for canary in [
        "canary1", "MIIEvQ", "kqhkiG9", "stor07", "10.0.0.7", "alice", "bob@",
    ] {
        assert!(!text.contains(canary), "{canary} in {text}");
    }
}

#[test]
fn a_problem_keeps_its_signature_and_functions_and_loses_its_secrets() {
    let mut problem = Problem::new(
        ProblemKind::Core,
        "SIGSEGV in parse_config (password=canary-reason)",
    );
    problem.signature = "v1:core:parse_config".into();
    problem.executable = Some("/home/alice/bin/app".into());
    problem.frames.push(Frame {
        function: Some("parse_config".into()),
        module: Some("/home/alice/lib/libapp.so".into()),
        file: Some("/home/alice/src/app.c".into()),
        code: Some("connect(\"postgres://u:canary-code@db\")".into()),
        ..Frame::default()
    });
    problem.threads = Some(vec![ThreadTrace {
        tid: 1,
        name: Some("worker-10.9.8.7".into()),
        crashed: true,
        frames: problem.frames.clone(),
        unwind_error: None,
    }]);
    problem.message = Some("token=canary-message".into());
    problem.text = Some("AKIAIOSFODNN7EXAMPLE".into());
    let before = problem.clone();
    let mut counts = ScrubCounts::default();
    scrub_problem(&scrubber(), &mut problem, &mut counts);
    assert_eq!(problem.signature, before.signature);
    assert_eq!(problem.frames[0].function, before.frames[0].function);
    let json = serde_json::to_string(&problem).unwrap();
    for canary in ["canary", "alice", "10.9.8.7", "AKIA"] {
        assert!(!json.contains(canary), "{canary} in {json}");
    }
    assert!(json.contains(&p(NameClass::User, "alice")));
    assert!(
        counts.removed >= 4 && counts.pseudonymized >= 4,
        "{counts:?}"
    );
}

#[test]
fn incidents_get_pseudonymous_nodes_and_report_ids() {
    let scrubber = scrubber();
    let mut incident = Incident {
        node: "node-1".into(),
        time_ms: 1,
        report_id: "node-1:1700000000000-42".into(),
        version: None,
        labels: [("owner".to_string(), "ops@example.com".to_string())].into(),
    };
    let mut counts = ScrubCounts::default();
    scrub_incident(&scrubber, &mut incident, &mut counts);
    let host = p(NameClass::Host, "node-1");
    assert_eq!(incident.node, host);
    assert_eq!(incident.report_id, format!("{host}:1700000000000-42"));
    assert_eq!(
        incident.labels["owner"],
        p(NameClass::Email, "ops@example.com")
    );
    assert!(crashmesh_protocol::report::is_safe_name(
        &incident.node,
        128
    ));
}

#[test]
fn no_rule_but_the_pem_block_spans_lines() {
    // So the line scrubber's pieces (cut at line ends) scrub like the whole text.
    check(
        "password=\nvalue\nBearer\nabcdef0123456789abcdef",
        "password=\nvalue\nBearer\nabcdef0123456789abcdef",
        &[],
    );
}

#[test]
fn an_added_pattern_without_an_action_redacts() {
    let pattern: ExtraPattern =
        serde_json::from_str(r#"{"name": "ticket", "pattern": "TICKET-(?P<v>\\d+)"}"#).unwrap();
    assert_eq!(pattern.action, "redact");
    let config = ScrubConfig {
        extra_patterns: vec![pattern],
        ..ScrubConfig::default()
    };
    let scrubber = Scrubber::new(&config, key()).unwrap();
    let mut counts = ScrubCounts::default();
    assert_eq!(
        scrubber.scrub_text("see TICKET-1234", &mut counts),
        "see TICKET-[REDACTED:ticket]"
    );
    assert_eq!(counts.removed, 1);
}

#[test]
fn an_ipv6_address_with_a_digit_or_at_least_three_colons_is_hidden() {
    // A digit but only two colons; three colons but no digit.
    assert!(rules::ipv6_worth_hiding("fe80::1"));
    assert!(rules::ipv6_worth_hiding("dead:beef::cafe"));
    // Neither: a C++-like name. And the unspecified address identifies nobody.
    assert!(!rules::ipv6_worth_hiding("dead::beef"));
    assert!(!rules::ipv6_worth_hiding("::"));
    check(
        "via fe80::1 and dead:beef::cafe",
        &format!(
            "via {} and {}",
            p(NameClass::Ip, "fe80::1"),
            p(NameClass::Ip, "dead:beef::cafe")
        ),
        &["ipv6_address"],
    );
}

#[test]
fn luhn_folds_each_doubled_digit_above_nine() {
    // Doubled digits 5..9 (10..18) fold to 1..9: these numbers pass only with the fold.
    assert!(rules::luhn_valid("4012 8888 8888 1881"));
    assert!(rules::luhn_valid("6011 0009 9013 9424"));
    assert!(!rules::luhn_valid("4012 8888 8888 1882"));
    // Length bounds: 13 and 19 digits are checked, 12 and 20 refused even when their
    // checksum is right.
    assert!(rules::luhn_valid("4222222222222"));
    assert!(!rules::luhn_valid("422222222222"));
    assert!(rules::luhn_valid("4000 0000 0000 0000 006"));
    assert!(!rules::luhn_valid("4000 0000 0000 0000 0002"));
}
