//! Version comparison for regression detection: `1.10.2` is newer than `1.9`, `5.14.0-427`
//! newer than `5.14.0-362`. Numbers compare as numbers, other runs as text; a version
//! that is a prefix of another is older. Good enough for package and kernel versions; a
//! vendor with stranger schemes gets "not newer", which never reopens a bug by mistake.

use std::cmp::Ordering;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Part<'a> {
    Number(u64),
    Text(&'a str),
}

fn parts(version: &str) -> Vec<Part<'_>> {
    let mut parts = Vec::new();
    let bytes = version.as_bytes();
    let mut start = 0;
    while start < bytes.len() {
        if !bytes[start].is_ascii_alphanumeric() {
            start += 1;
            continue;
        }
        let digit = bytes[start].is_ascii_digit();
        let mut end = start;
        while end < bytes.len()
            && bytes[end].is_ascii_alphanumeric()
            && bytes[end].is_ascii_digit() == digit
        {
            end += 1;
        }
        let text = &version[start..end];
        parts.push(match (digit, text.parse()) {
            (true, Ok(number)) => Part::Number(number),
            _ => Part::Text(text),
        });
        start = end;
    }
    parts
}

/// Orders two versions.
pub fn compare(a: &str, b: &str) -> Ordering {
    parts(a).cmp(&parts(b))
}

/// The newest of some versions.
pub fn newest<'a>(versions: impl Iterator<Item = &'a String>) -> Option<String> {
    versions
        .max_by(|a, b| compare(a, b))
        .map(|version| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_package_and_kernel_versions() {
        assert_eq!(compare("1.10.2", "1.9"), Ordering::Greater);
        assert_eq!(
            compare("5.14.0-427.el9", "5.14.0-362.el9"),
            Ordering::Greater
        );
        assert_eq!(compare("2.0", "2.0"), Ordering::Equal);
        assert_eq!(compare("2.0", "2.0.1"), Ordering::Less);
        assert_eq!(
            newest(["1.2".to_string(), "1.10".to_string(), "1.9".to_string()].iter()),
            Some("1.10".to_string())
        );
    }
}
