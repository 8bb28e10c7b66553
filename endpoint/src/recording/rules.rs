//! Rules that mark problems uninteresting: kept and counted, hidden by default.
//!
//! A rule matches when every field it sets matches (fields left out match anything):
//! `kind` (the snake_case kind), `executable` (a glob on the executable's path), `signal`
//! (the number), `tainted` (whether the kernel was tainted), `component` (a glob on the
//! package's name, or on the crashing frame's module when there is no package).

use crashmesh_protocol::Problem;
use serde::{Deserialize, Serialize};

use crate::error::EndpointError;

/// One rule from `[[rules]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// `core`, `kernel_oops`, `python`, …
    pub kind: Option<String>,
    /// A glob on the executable's path.
    pub executable: Option<String>,
    /// The fatal signal's number.
    pub signal: Option<i32>,
    /// True: only tainted kernels; false: only untainted ones.
    pub tainted: Option<bool>,
    /// A glob on the component: the package's name, else the crashing frame's module.
    pub component: Option<String>,
}

impl Rule {
    /// Checks the globs compile and that the rule sets at least one field.
    pub fn check(&self) -> Result<(), EndpointError> {
        for pattern in [&self.executable, &self.component].into_iter().flatten() {
            glob::Pattern::new(pattern).map_err(|error| {
                EndpointError::Config(format!("rule glob {pattern:?}: {error}"))
            })?;
        }
        if *self == Rule::default() {
            return Err(EndpointError::Config(
                "a rule with no field would hide every problem".into(),
            ));
        }
        Ok(())
    }

    /// True when the rule matches the problem.
    pub fn matches(&self, problem: &Problem) -> bool {
        let glob = |pattern: &str, value: Option<&str>| {
            value.is_some_and(|value| {
                glob::Pattern::new(pattern).is_ok_and(|pattern| pattern.matches(value))
            })
        };
        if let Some(kind) = &self.kind
            && kind != problem.kind.as_str()
        {
            return false;
        }
        if let Some(pattern) = &self.executable
            && !glob(pattern, problem.executable.as_deref())
        {
            return false;
        }
        if let Some(signal) = self.signal
            && problem.signal != Some(signal)
        {
            return false;
        }
        if let Some(tainted) = self.tainted {
            let is_tainted = problem
                .taint_flags
                .as_ref()
                .is_some_and(|flags| !flags.is_empty());
            if tainted != is_tainted {
                return false;
            }
        }
        if let Some(pattern) = &self.component
            && !glob(pattern, component(problem).as_deref())
        {
            return false;
        }
        true
    }

    /// The rule as a person reads it (`kind=core signal=6`).
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(kind) = &self.kind {
            parts.push(format!("kind={kind}"));
        }
        if let Some(executable) = &self.executable {
            parts.push(format!("executable={executable}"));
        }
        if let Some(signal) = self.signal {
            parts.push(format!("signal={signal}"));
        }
        if let Some(tainted) = self.tainted {
            parts.push(format!("tainted={tainted}"));
        }
        if let Some(component) = &self.component {
            parts.push(format!("component={component}"));
        }
        parts.join(" ")
    }
}

/// The problem's component: its package's name, else the first frame's module.
pub fn component(problem: &Problem) -> Option<String> {
    if let Some(package) = &problem.package
        && let Some(name) = package.split_whitespace().next()
    {
        return Some(name.to_string());
    }
    problem.frames.iter().find_map(|frame| frame.module.clone())
}

/// The first rule that matches, described; `None` when the problem is interesting.
pub fn first_match(rules: &[Rule], problem: &Problem) -> Option<String> {
    rules
        .iter()
        .find(|rule| rule.matches(problem))
        .map(Rule::describe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crashmesh_protocol::ProblemKind;

    #[test]
    fn every_set_field_must_match() {
        let mut problem = Problem::new(ProblemKind::Core, "SIGABRT in abort");
        problem.signal = Some(6);
        problem.executable = Some("/usr/bin/test-runner".into());
        problem.package = Some("testsuite 1.0".into());
        let rule = Rule {
            kind: Some("core".into()),
            executable: Some("/usr/bin/test-*".into()),
            signal: Some(6),
            component: Some("test*".into()),
            ..Rule::default()
        };
        rule.check().unwrap();
        assert!(rule.matches(&problem));
        problem.signal = Some(11);
        assert!(!rule.matches(&problem));
        assert!(Rule::default().check().is_err());

        let mut oops = Problem::new(ProblemKind::KernelOops, "BUG");
        let tainted = Rule {
            tainted: Some(true),
            ..Rule::default()
        };
        assert!(!tainted.matches(&oops));
        oops.taint_flags = Some(vec!["P".into()]);
        assert!(tainted.matches(&oops));
        assert_eq!(
            first_match(&[rule, tainted], &oops).unwrap(),
            "tainted=true"
        );
    }
}
