//! The scrubber: every rule compiled into one regular expression, run in one pass over
//! the bytes; each match is removed (secrets) or replaced by its keyed pseudonym (names).

use std::collections::BTreeMap;

use regex::bytes::{Regex, RegexBuilder};
use regex_automata::meta;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input};
use serde::{Deserialize, Serialize};

use crate::PrivacyError;
use crate::pseudonym::PseudonymKey;
use crate::rules::{self, Action, Check, ExtraPattern, NameClass, Rule};

/// The most bytes of one line the line scrubber holds while waiting for its end; a
/// longer line is scrubbed in pieces of this size.
pub const LINE_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// Pseudonyms remembered within one scrub call (names repeat on every line of a log);
/// the memory is cleared when full.
pub const PSEUDONYM_CACHE_LEN_MAX: usize = 4096;
/// Bytes of the combined regular expression once compiled (the `regex` crate's limit).
pub const REGEX_BYTES_MAX: usize = 64 << 20;

/// What scrubbing needs besides the key: the allowlist, added rules, known names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScrubConfig {
    /// Environment variables whose values are kept (exact names, or prefixes ending in
    /// `*`); the values of every other variable are removed.
    pub env_allowlist: Vec<String>,
    /// Rules tried before the built-in ones.
    pub extra_patterns: Vec<ExtraPattern>,
    /// Host names always pseudonymized wherever they appear (the cluster's node names
    /// are added by the caller).
    pub hosts: Vec<String>,
    /// User names always pseudonymized wherever they appear.
    pub users: Vec<String>,
    /// See [`LINE_BYTES_MAX_DEFAULT`].
    pub line_bytes_max: usize,
}

impl Default for ScrubConfig {
    fn default() -> ScrubConfig {
        ScrubConfig {
            env_allowlist: rules::DEFAULT_ENV_ALLOWLIST
                .iter()
                .map(|name| name.to_string())
                .collect(),
            extra_patterns: Vec::new(),
            hosts: Vec::new(),
            users: Vec::new(),
            line_bytes_max: LINE_BYTES_MAX_DEFAULT,
        }
    }
}

/// What was scrubbed: counts per rule.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubCounts {
    /// Rule name → matches acted on.
    pub rules: BTreeMap<String, u64>,
    /// Secrets removed (environment values included).
    pub removed: u64,
    /// Names replaced by pseudonyms.
    pub pseudonymized: u64,
}

impl ScrubCounts {
    /// Counts one action of `rule`.
    pub fn add(&mut self, rule: &str, removed: bool) {
        // Looked up first: a rule's name is allocated once, not at every match.
        match self.rules.get_mut(rule) {
            Some(count) => *count += 1,
            None => {
                self.rules.insert(rule.to_string(), 1);
            }
        }
        if removed {
            self.removed += 1;
        } else {
            self.pseudonymized += 1;
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &ScrubCounts) {
        for (rule, count) in &other.rules {
            *self.rules.entry(rule.clone()).or_insert(0) += count;
        }
        self.removed += other.removed;
        self.pseudonymized += other.pseudonymized;
    }

    /// Everything acted on.
    pub fn total(&self) -> u64 {
        self.removed + self.pseudonymized
    }
}

struct CompiledRule {
    name: String,
    action: Action,
    check: Check,
    /// The rule alone, when it has a `v` group: run (anchored, on the match only) to find
    /// the group.
    alone: Option<meta::Regex>,
}

/// The scrubber of one cluster: its rules and its pseudonym key.
pub struct Scrubber {
    /// Every rule as one pattern of a multi-pattern regex (leftmost-first: at a position,
    /// the first rule in priority order wins); a match names its pattern.
    combined: meta::Regex,
    rules: Vec<CompiledRule>,
    key: PseudonymKey,
    env_allowlist: Vec<String>,
    line_bytes_max: usize,
    pem_open: Regex,
}

fn escape_names(names: &[String]) -> Option<String> {
    let mut names: Vec<&String> = names.iter().filter(|name| !name.is_empty()).collect();
    if names.is_empty() {
        return None;
    }
    // Longest first, so `node-10` is not read as `node-1` followed by `0`.
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    names.dedup();
    let alternatives: Vec<String> = names.iter().map(|name| regex::escape(name)).collect();
    Some(format!(r"(?-u:\b)(?i:{})(?-u:\b)", alternatives.join("|")))
}

fn parse_action(pattern: &ExtraPattern) -> Result<Action, PrivacyError> {
    Ok(match pattern.action.as_str() {
        "redact" => Action::Redact,
        "host" => Action::Pseudonym(NameClass::Host),
        "ip" => Action::Pseudonym(NameClass::Ip),
        "mac" => Action::Pseudonym(NameClass::Mac),
        "user" => Action::Pseudonym(NameClass::User),
        "email" => Action::Pseudonym(NameClass::Email),
        other => {
            return Err(PrivacyError::BadRule {
                name: pattern.name.clone(),
                reason: format!("action {other:?} is not redact, host, ip, mac, user or email"),
            });
        }
    })
}

impl Scrubber {
    /// Compiles the extra patterns, the known names and the built-in rules (in that
    /// order of priority) into one expression.
    pub fn new(config: &ScrubConfig, key: PseudonymKey) -> Result<Scrubber, PrivacyError> {
        let mut all: Vec<Rule> = Vec::new();
        for extra in &config.extra_patterns {
            if extra.name.is_empty()
                || !extra
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
            {
                return Err(PrivacyError::BadRule {
                    name: extra.name.clone(),
                    reason: "a rule name is 1 or more of A-Z a-z 0-9 _".into(),
                });
            }
            all.push(Rule {
                name: extra.name.clone(),
                pattern: extra.pattern.clone(),
                action: parse_action(extra)?,
                check: Check::None,
            });
        }
        let builtin = rules::builtin_rules();
        // Known names go after the secrets (a host name inside a token is the token's).
        let names_at = builtin
            .iter()
            .position(|rule| rule.name == "email")
            .unwrap_or(builtin.len());
        let mut builtin = builtin.into_iter();
        all.extend(builtin.by_ref().take(names_at));
        if let Some(pattern) = escape_names(&config.hosts) {
            all.push(Rule {
                name: "known_host".into(),
                pattern,
                action: Action::Pseudonym(NameClass::Host),
                check: Check::None,
            });
        }
        if let Some(pattern) = escape_names(&config.users) {
            all.push(Rule {
                name: "known_user".into(),
                pattern,
                action: Action::Pseudonym(NameClass::User),
                check: Check::None,
            });
        }
        all.extend(builtin);

        for rule in &all {
            // Each rule alone first, so a bad added pattern is named in the error.
            RegexBuilder::new(&rule.pattern)
                .unicode(false)
                .build()
                .map_err(|error| PrivacyError::BadRule {
                    name: rule.name.clone(),
                    reason: error.to_string(),
                })?;
        }
        let build = |patterns: &[&str]| {
            meta::Regex::builder()
                .syntax(syntax::Config::new().unicode(false).utf8(false))
                .configure(
                    meta::Regex::config()
                        .utf8_empty(false)
                        .nfa_size_limit(Some(REGEX_BYTES_MAX))
                        .hybrid_cache_capacity(REGEX_BYTES_MAX),
                )
                .build_many(patterns)
                .map_err(|error| error.to_string())
        };
        let patterns: Vec<&str> = all.iter().map(|rule| rule.pattern.as_str()).collect();
        let combined = build(&patterns).map_err(|reason| PrivacyError::BadRule {
            name: "(combined)".into(),
            reason,
        })?;
        let mut rules = Vec::new();
        for rule in &all {
            let alone = if rule.pattern.contains("(?P<v>") {
                Some(
                    build(&[rule.pattern.as_str()]).map_err(|reason| PrivacyError::BadRule {
                        name: rule.name.clone(),
                        reason,
                    })?,
                )
            } else {
                None
            };
            rules.push(CompiledRule {
                name: rule.name.clone(),
                action: rule.action,
                check: rule.check,
                alone,
            });
        }
        Ok(Scrubber {
            combined,
            rules,
            key,
            env_allowlist: config.env_allowlist.clone(),
            line_bytes_max: config.line_bytes_max.max(4096),
            pem_open: Regex::new(
                r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----|-----END [A-Z0-9 ]*PRIVATE KEY-----",
            )
            .expect("the PEM pattern compiles"),
        })
    }

    /// The rule names in priority order (documentation, `privacy preview`).
    pub fn rule_names(&self) -> Vec<&str> {
        self.rules.iter().map(|rule| rule.name.as_str()).collect()
    }

    /// The pseudonym of a name of `class` (the same in every node of the cluster).
    pub fn pseudonym(&self, class: NameClass, value: &str) -> String {
        self.key.pseudonym(class, value)
    }

    /// Scrubs `input` and appends the result to `out`.
    pub fn scrub_bytes_into(&self, input: &[u8], out: &mut Vec<u8>, counts: &mut ScrubCounts) {
        let mut copied = 0;
        // One set of capture slots per rule with a `v` group, made on first use.
        let mut captures: Vec<Option<regex_automata::util::captures::Captures>> =
            vec![None; self.rules.len()];
        let mut pseudonyms: std::collections::HashMap<(NameClass, &[u8]), String> =
            std::collections::HashMap::new();
        for found in self.combined.find_iter(input) {
            if found.is_empty() {
                continue;
            }
            let index = found.pattern().as_usize();
            let rule = &self.rules[index];
            let mut target = found.range();
            if let Some(alone) = &rule.alone {
                // The rule's own match at the same place (anchored, with the haystack
                // around it for look-around), for its `v` group.
                let captures = captures[index].get_or_insert_with(|| alone.create_captures());
                alone.search_captures(
                    &Input::new(input)
                        .span(found.range())
                        .anchored(Anchored::Yes),
                    captures,
                );
                if let Some(value) = captures.get_group_by_name("v") {
                    target = value.range();
                }
            }
            let target_bytes = &input[target.clone()];
            let passes = match rule.check {
                Check::None => true,
                Check::Luhn => rules::luhn_valid(&String::from_utf8_lossy(target_bytes)),
                Check::Ipv6 => rules::ipv6_worth_hiding(&String::from_utf8_lossy(target_bytes)),
                Check::Ipv4 => rules::ipv4_worth_hiding(&String::from_utf8_lossy(target_bytes)),
            };
            if !passes {
                continue;
            }
            out.extend_from_slice(&input[copied..target.start]);
            match rule.action {
                Action::Redact => {
                    out.extend_from_slice(b"[REDACTED:");
                    out.extend_from_slice(rule.name.as_bytes());
                    out.push(b']');
                    counts.add(&rule.name, true);
                }
                Action::Pseudonym(class) => {
                    if pseudonyms.len() >= PSEUDONYM_CACHE_LEN_MAX {
                        pseudonyms.clear();
                    }
                    let pseudonym = pseudonyms.entry((class, target_bytes)).or_insert_with(|| {
                        self.key
                            .pseudonym(class, &String::from_utf8_lossy(target_bytes))
                    });
                    out.extend_from_slice(pseudonym.as_bytes());
                    counts.add(&rule.name, false);
                }
            }
            copied = target.end;
        }
        out.extend_from_slice(&input[copied..]);
    }

    /// Scrubs bytes (a log, a /proc file) whole.
    pub fn scrub_bytes(&self, input: &[u8], counts: &mut ScrubCounts) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + input.len() / 8);
        self.scrub_bytes_into(input, &mut out, counts);
        out
    }

    /// Scrubs a text.
    pub fn scrub_text(&self, text: &str, counts: &mut ScrubCounts) -> String {
        // Replacements are ASCII and matches start and end at ASCII bytes, so valid UTF-8
        // stays valid; lossy conversion is only a guard.
        String::from_utf8_lossy(&self.scrub_bytes(text.as_bytes(), counts)).into_owned()
    }

    /// Scrubs an optional text in place.
    pub fn scrub_option(&self, text: &mut Option<String>, counts: &mut ScrubCounts) {
        if let Some(value) = text.as_mut() {
            *value = self.scrub_text(value, counts);
        }
    }

    /// A line-based scrubber for a log arriving in pieces.
    pub fn lines(&self) -> LineScrubber<'_> {
        LineScrubber {
            scrubber: self,
            pending: Vec::new(),
            counts: ScrubCounts::default(),
        }
    }

    /// `/proc/PID/environ` (`NAME=value` separated by NUL): values of variables outside
    /// the allowlist removed (counted as `env_value`), allowed values scrubbed by pattern.
    pub fn scrub_environ(&self, environ: &[u8], counts: &mut ScrubCounts) -> Vec<u8> {
        let mut out = Vec::with_capacity(environ.len());
        for (index, entry) in environ.split(|&b| b == 0).enumerate() {
            if index > 0 {
                out.push(0);
            }
            if entry.is_empty() {
                continue;
            }
            let (name, value) = match entry.iter().position(|&b| b == b'=') {
                Some(at) => (&entry[..at], &entry[at + 1..]),
                None => (entry, &[][..]),
            };
            let name_text = String::from_utf8_lossy(name);
            out.extend_from_slice(name);
            out.push(b'=');
            if rules::env_allowed(&self.env_allowlist, &name_text) {
                // `USER=alice` is a `user=` match: scrub the entry whole, then drop the
                // name again.
                let scrubbed = self.scrub_bytes(entry, counts);
                let at = scrubbed
                    .iter()
                    .position(|&b| b == b'=')
                    .map_or(scrubbed.len(), |at| at + 1);
                out.extend_from_slice(&scrubbed[at..]);
            } else if !value.is_empty() {
                out.extend_from_slice(b"[REDACTED:env_value]");
                counts.add("env_value", true);
            }
        }
        out
    }

    /// `/proc/PID/cmdline` (arguments separated by NUL): each argument scrubbed; the
    /// argument after a secret option (`--password SECRET`) removed whole.
    pub fn scrub_cmdline(&self, cmdline: &[u8], counts: &mut ScrubCounts) -> Vec<u8> {
        let mut out = Vec::with_capacity(cmdline.len());
        let mut secret_next = false;
        for (index, argument) in cmdline.split(|&b| b == 0).enumerate() {
            if index > 0 {
                out.push(0);
            }
            if secret_next && !argument.is_empty() {
                out.extend_from_slice(b"[REDACTED:secret_argument]");
                counts.add("secret_argument", true);
                secret_next = false;
                continue;
            }
            secret_next = is_secret_option(argument);
            self.scrub_bytes_into(argument, &mut out, counts);
        }
        out
    }

    /// A command line as one text (`prog --password x --host db.corp`), split on spaces.
    pub fn scrub_command_text(&self, command: &str, counts: &mut ScrubCounts) -> String {
        let joined = command.replace(' ', "\0");
        String::from_utf8_lossy(&self.scrub_cmdline(joined.as_bytes(), counts)).replace('\0', " ")
    }
}

/// `--password`, `-password`, `--api-key`, … (an option whose next argument is a secret).
fn is_secret_option(argument: &[u8]) -> bool {
    let Some(name) = argument
        .strip_prefix(b"--")
        .or_else(|| argument.strip_prefix(b"-"))
    else {
        return false;
    };
    if name.contains(&b'=') || name.is_empty() {
        return false;
    }
    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
    [
        "password",
        "passwd",
        "pass",
        "secret",
        "token",
        "api-key",
        "apikey",
        "api_key",
        "access-key",
        "secret-key",
        "private-key",
        "auth",
    ]
    .iter()
    .any(|word| name == *word || name.ends_with(&format!("-{word}")))
}

/// Scrubs a log given in pieces, a line at a time (see [`Scrubber::lines`]).
///
/// A piece is scrubbed up to its last complete line; the rest waits for the next piece.
/// An open PEM private key block is held back until its END line (up to the line limit),
/// so a key split over two pieces is still removed whole.
pub struct LineScrubber<'a> {
    scrubber: &'a Scrubber,
    pending: Vec<u8>,
    counts: ScrubCounts,
}

impl LineScrubber<'_> {
    /// Takes the next piece; appends what can be scrubbed already to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        self.pending.extend_from_slice(input);
        let mut cut = match self.pending.iter().rposition(|&b| b == b'\n') {
            Some(at) => at + 1,
            None if self.pending.len() > self.scrubber.line_bytes_max => self.pending.len(),
            None => return,
        };
        if let Some(open) = self
            .scrubber
            .pem_open
            .find_iter(&self.pending[..cut])
            .last()
            .filter(|found| found.as_bytes().starts_with(b"-----BEGIN"))
            && cut - open.start() <= self.scrubber.line_bytes_max
        {
            cut = open.start();
        }
        if cut == 0 {
            return;
        }
        self.scrubber
            .scrub_bytes_into(&self.pending[..cut], out, &mut self.counts);
        self.pending.drain(..cut);
    }

    /// Scrubs whatever is left; gives the counts of the whole log.
    pub fn finish(mut self, out: &mut Vec<u8>) -> ScrubCounts {
        let rest = std::mem::take(&mut self.pending);
        self.scrubber.scrub_bytes_into(&rest, out, &mut self.counts);
        self.counts
    }
}
