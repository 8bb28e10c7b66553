//! Small text helpers shared by the parsers.

/// `text` cut to at most `bytes_max` bytes, on a character boundary.
pub(crate) fn truncate_to_bytes(text: &str, bytes_max: usize) -> &str {
    if text.len() <= bytes_max {
        return text;
    }
    let mut end = bytes_max;
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A hex number without or with a `0x` prefix; `None` when it does not fit 64 bits.
pub(crate) fn parse_hex(digits: &str) -> Option<u64> {
    let digits = digits
        .strip_prefix("0x")
        .or_else(|| digits.strip_prefix("0X"))
        .unwrap_or(digits);
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The lines of `text`, each without its line terminator (`\n` or `\r\n`).
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_to_bytes("héllo", 2), "h");
        assert_eq!(truncate_to_bytes("héllo", 3), "hé");
        assert_eq!(truncate_to_bytes("abc", 10), "abc");
    }

    #[test]
    fn hex_numbers_parse_with_and_without_prefix() {
        assert_eq!(parse_hex("0x1f"), Some(31));
        assert_eq!(parse_hex("ffffffff81000000"), Some(0xffff_ffff_8100_0000));
        assert_eq!(parse_hex("1ffffffff81000000"), None);
        assert_eq!(parse_hex(""), None);
    }
}
