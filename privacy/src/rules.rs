//! The rules: what counts as a secret (removed) and what counts as a name (replaced by a
//! keyed pseudonym), built in and added by configuration.
//!
//! Every rule is one regular expression. A rule acts on its whole match, or only on its
//! capture group named `v` when it has one (so `password=hunter2` keeps `password=`).

use serde::{Deserialize, Serialize};

/// What a rule does with what it matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A secret: replaced by `[REDACTED:<rule>]`.
    Redact,
    /// A name: replaced by a keyed pseudonym of this class.
    Pseudonym(NameClass),
}

/// The kinds of names pseudonymized; each has its own pseudonym prefix, so a host's
/// pseudonym never equals a user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NameClass {
    Host,
    Ip,
    Mac,
    User,
    Email,
}

impl NameClass {
    /// The pseudonym's prefix (`host-…`).
    pub fn prefix(self) -> &'static str {
        match self {
            NameClass::Host => "host",
            NameClass::Ip => "ip",
            NameClass::Mac => "mac",
            NameClass::User => "user",
            NameClass::Email => "mail",
        }
    }
}

/// An extra check a match must pass before the rule acts (regular expressions alone
/// would flag too much).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Always acts.
    None,
    /// The digits pass the Luhn check (credit-card numbers).
    Luhn,
    /// Parses as an IPv6 address that is not loopback or unspecified, with a digit or at
    /// least three colons (`dead::beef` in a C++ name is not an address).
    Ipv6,
    /// Not `127.x.x.x` or `0.0.0.0` (they identify nobody).
    Ipv4,
}

/// One rule.
#[derive(Clone, Debug)]
pub struct Rule {
    /// A short stable name, counted in the scrub summary (`aws_access_key`).
    pub name: String,
    /// The regular expression (bytes, ASCII classes; `(?i)` allowed).
    pub pattern: String,
    pub action: Action,
    pub check: Check,
}

impl Rule {
    fn new(name: &str, pattern: &str, action: Action, check: Check) -> Rule {
        Rule {
            name: name.to_string(),
            pattern: pattern.to_string(),
            action,
            check,
        }
    }
}

/// A rule added by configuration (`[[privacy.patterns]]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraPattern {
    /// Counted under this name in the scrub summary.
    pub name: String,
    /// A regular expression; a group named `v` limits the replacement to it.
    pub pattern: String,
    /// `redact` (default) or a name class to pseudonymize as: `host`, `ip`, `mac`,
    /// `user`, `email`.
    #[serde(default = "default_extra_action")]
    pub action: String,
}

fn default_extra_action() -> String {
    "redact".to_string()
}

/// Key names whose values are secrets in `key=value`, `key: value` and `"key": "value"`.
const SECRET_KEY_WORDS: &str = r"passwd|password|passphrase|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|client[_-]?secret|credentials?|authorization|auth[_-]?token|session[_-]?id|cookie";

/// Top-level domains a free-text host name must end with to be recognised (plus every
/// host named in the configuration, the cluster's node names and the syslog host field).
const HOST_TLDS: &str = r"com|net|org|io|local|localdomain|internal|intranet|intra|lan|corp|home|cloud|example|test|edu|gov|de|fr|uk|us|eu|cn|jp|ru|nl|it|es|ch|se|br|in|au|ca";

/// The built-in rules, in priority order (the first that matches at a position wins).
pub fn builtin_rules() -> Vec<Rule> {
    use Action::{Pseudonym, Redact};
    use NameClass::*;
    let b = r"(?-u:\b)";
    vec![
        // Whole blocks first: a PEM private key, with or without its END line.
        Rule::new(
            "pem_private_key",
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[A-Za-z0-9+/=\s:,.-]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\z|-----)",
            Redact,
            Check::None,
        ),
        Rule::new(
            "jwt",
            &format!(r"{b}eyJ[A-Za-z0-9_-]{{8,}}\.eyJ[A-Za-z0-9_-]{{8,}}\.[A-Za-z0-9_-]{{8,}}"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "aws_access_key",
            &format!(r"{b}(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{{16}}{b}"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "aws_secret_key",
            r#"(?i:aws_?secret_?(?:access_?)?key)"?[ \t]*[=:][ \t]*"?(?P<v>[A-Za-z0-9/+=]{40})"#,
            Redact,
            Check::None,
        ),
        Rule::new(
            "gcp_api_key",
            &format!(r"{b}AIza[0-9A-Za-z_-]{{35}}"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "azure_storage_key",
            r"(?i:AccountKey|SharedAccessKey)=(?P<v>[A-Za-z0-9+/]{20,}={0,2})",
            Redact,
            Check::None,
        ),
        Rule::new(
            "azure_sas_signature",
            r"[?&]sig=(?P<v>[A-Za-z0-9%/+=]{20,})",
            Redact,
            Check::None,
        ),
        Rule::new(
            "github_token",
            &format!(r"{b}(?:gh[pousr]_[A-Za-z0-9]{{36}}|github_pat_[A-Za-z0-9_]{{22,255}})"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "gitlab_token",
            &format!(r"{b}gl(?:pat|dt|rt|ptt|cbt)-[A-Za-z0-9_-]{{20,}}"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "slack_token",
            &format!(r"{b}xox[abposr]-[A-Za-z0-9-]{{10,}}"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "slack_webhook",
            r"hooks\.slack\.com/services/[A-Za-z0-9/]{20,}",
            Redact,
            Check::None,
        ),
        Rule::new(
            "stripe_key",
            &format!(r"{b}[rs]k_(?:live|test)_[A-Za-z0-9]{{16,}}"),
            Redact,
            Check::None,
        ),
        Rule::new(
            "bearer_token",
            r"(?i:bearer|basic)[ \t]+(?P<v>[A-Za-z0-9._~+/-]{16,}=*)",
            Redact,
            Check::None,
        ),
        Rule::new(
            "url_password",
            r"[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]+:(?P<v>[^\s@/]+)@",
            Redact,
            Check::None,
        ),
        // `--password SECRET` in a logged command line, and `"--password", "SECRET"` in a
        // JSON argument list.
        Rule::new(
            "secret_option",
            r#"(?:(?m:^)|[\s"'])(?i:--?(?:password|passwd|pass|secret|token|api[_-]?key|access[_-]?key|secret[_-]?key|private[_-]?key))(?:[ \t]+|"[ \t]*,[ \t]*")"?(?P<v>[^\s"',;\]]+)"#,
            Redact,
            Check::None,
        ),
        Rule::new(
            "secret_value",
            &format!(
                r#"(?i:[A-Za-z0-9_.-]*(?:{SECRET_KEY_WORDS})[A-Za-z0-9_.-]*)"?[ \t]*[=:][ \t]*(?:(?i:bearer|basic|token)[ \t]+)?(?P<v>"[^"\n]*"|'[^'\n]*'|[^\s,;&"']+)"#
            ),
            Redact,
            Check::None,
        ),
        Rule::new(
            "credit_card",
            &format!(
                r"{b}(?:4\d{{3}}|5[1-5]\d{{2}}|2[2-7]\d{{2}}|3[47]\d{{2}}|6011|65\d{{2}})(?:[ -]?\d){{9,15}}{b}"
            ),
            Redact,
            Check::Luhn,
        ),
        Rule::new(
            "email",
            &format!(r"{b}[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{{2,}}{b}"),
            Pseudonym(Email),
            Check::None,
        ),
        Rule::new(
            "home_path",
            r"/(?:home|Users)/(?P<v>[A-Za-z0-9_][A-Za-z0-9._-]*)",
            Pseudonym(User),
            Check::None,
        ),
        Rule::new(
            "user_name",
            r#"(?i:(?:user|username|login|owner)(?:=|: ?)|for (?:invalid )?user )"?(?P<v>[A-Za-z_][A-Za-z0-9._-]*)"#,
            Pseudonym(User),
            Check::None,
        ),
        Rule::new(
            "mac_address",
            &format!(r"{b}[0-9A-Fa-f]{{2}}(?:[:-][0-9A-Fa-f]{{2}}){{5}}{b}"),
            Pseudonym(Mac),
            Check::None,
        ),
        Rule::new(
            "ipv4_address",
            &format!(
                r"{b}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){{3}}{b}"
            ),
            Pseudonym(Ip),
            Check::Ipv4,
        ),
        Rule::new(
            "ipv6_address",
            &format!(r"(?:{b}[0-9A-Fa-f]{{1,4}}:|::)[0-9A-Fa-f:.]*:[0-9A-Fa-f.]*"),
            Pseudonym(Ip),
            Check::Ipv6,
        ),
        // A syslog line's host field: `Nov 26 12:00:01 HOST prog[1]:` and RFC 3339 stamps.
        Rule::new(
            "syslog_host",
            r"(?m:^(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[0-9:.]+(?:Z|[+-]\d\d:?\d\d)?) (?P<v>[A-Za-z0-9][A-Za-z0-9.-]*) )",
            Pseudonym(Host),
            Check::None,
        ),
        Rule::new(
            "host_name",
            &format!(
                r"{b}(?i:[a-z0-9](?:[a-z0-9-]{{0,62}}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{{0,62}}[a-z0-9])?)*\.(?:{HOST_TLDS})){b}"
            ),
            Pseudonym(Host),
            Check::None,
        ),
    ]
}

/// Environment variables whose values are kept by default (still scrubbed by pattern).
pub const DEFAULT_ENV_ALLOWLIST: &[&str] = &[
    "PATH",
    "LANG",
    "LANGUAGE",
    "LC_*",
    "TZ",
    "TERM",
    "SHELL",
    "PWD",
    "HOME",
    "USER",
    "LD_LIBRARY_PATH",
    "LD_PRELOAD",
    "MALLOC_*",
    "RUST_BACKTRACE",
    "PYTHONPATH",
    "JAVA_HOME",
];

/// True when `name` is allowed by `allowlist` (exact names, or a prefix ending in `*`).
pub fn env_allowed(allowlist: &[String], name: &str) -> bool {
    allowlist
        .iter()
        .any(|allowed| match allowed.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => allowed == name,
        })
}

/// The Luhn checksum over the digits of `text` (other characters ignored).
pub fn luhn_valid(text: &str) -> bool {
    let digits: Vec<u32> = text.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(index, &digit)| {
            if index % 2 == 1 {
                let doubled = digit * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                digit
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// See [`Check::Ipv6`].
pub fn ipv6_worth_hiding(text: &str) -> bool {
    let Ok(address) = text.parse::<std::net::Ipv6Addr>() else {
        return false;
    };
    !address.is_loopback()
        && !address.is_unspecified()
        && (text.bytes().any(|b| b.is_ascii_digit()) || text.matches(':').count() >= 3)
}

/// See [`Check::Ipv4`].
pub fn ipv4_worth_hiding(text: &str) -> bool {
    !(text.starts_with("127.") || text == "0.0.0.0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_test_card_numbers_and_refuses_near_misses() {
        assert!(luhn_valid("4111 1111 1111 1111"));
        assert!(luhn_valid("5500-0000-0000-0004"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111 1111 1111 1112"));
        assert!(!luhn_valid("4111"));
    }

    #[test]
    fn ipv6_check_tells_addresses_from_names() {
        assert!(ipv6_worth_hiding("2001:db8::8a2e:370:7334"));
        assert!(ipv6_worth_hiding("fe80::1ff:fe23:4567:890a"));
        assert!(!ipv6_worth_hiding("::1"));
        assert!(!ipv6_worth_hiding("12:30:45"));
        assert!(!ipv6_worth_hiding("dead::beef"));
    }

    #[test]
    fn env_allowlist_takes_names_and_prefixes() {
        let list = vec!["PATH".to_string(), "LC_*".to_string()];
        assert!(env_allowed(&list, "PATH"));
        assert!(env_allowed(&list, "LC_ALL"));
        assert!(!env_allowed(&list, "PATHX"));
        assert!(!env_allowed(&list, "AWS_SECRET_ACCESS_KEY"));
    }

    #[test]
    fn every_builtin_rule_compiles_alone() {
        for rule in builtin_rules() {
            regex::bytes::RegexBuilder::new(&rule.pattern)
                .unicode(false)
                .build()
                .unwrap_or_else(|error| panic!("{}: {error}", rule.name));
        }
    }
}
