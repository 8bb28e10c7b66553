//! Keyed pseudonyms: `host-3f9a0c51e2d4` for `db1.corp.example.com`, the same on every
//! node of a cluster (all share the key) and meaningless to anyone without the key.

use crate::PrivacyError;
use crate::rules::NameClass;

/// Bytes of a pseudonym key.
pub const KEY_BYTES: usize = 32;
/// Hex digits of a pseudonym after its prefix (48 bits: collisions are negligible for the
/// names of one cluster, and the pseudonym stays short in logs).
pub const PSEUDONYM_HEX_DIGITS: usize = 12;

/// The cluster's pseudonym key (blake3's key).
#[derive(Clone, PartialEq, Eq)]
pub struct PseudonymKey([u8; KEY_BYTES]);

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never printed: the key is what keeps pseudonyms meaningless outside.
        f.write_str("PseudonymKey(…)")
    }
}

impl PseudonymKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> PseudonymKey {
        PseudonymKey(bytes)
    }

    /// A key from 64 hex digits (the key file's form; surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<PseudonymKey, PrivacyError> {
        let text = text.trim();
        if text.len() != KEY_BYTES * 2 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(PrivacyError::BadKey(format!(
                "expected {} hex digits, found {} characters",
                KEY_BYTES * 2,
                text.len()
            )));
        }
        let mut bytes = [0u8; KEY_BYTES];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16)
                .map_err(|error| PrivacyError::BadKey(error.to_string()))?;
        }
        Ok(PseudonymKey(bytes))
    }

    /// The key as 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// The pseudonym of `value` as a name of `class`. Host names and e-mail addresses
    /// compare case-insensitively (so are lower-cased first); user names do not.
    pub fn pseudonym(&self, class: NameClass, value: &str) -> String {
        let normalized = match class {
            NameClass::Host | NameClass::Email | NameClass::Ip => value.to_ascii_lowercase(),
            NameClass::Mac => value.to_ascii_lowercase().replace('-', ":"),
            NameClass::User => value.to_string(),
        };
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(class.prefix().as_bytes());
        hasher.update(b"\0");
        hasher.update(normalized.as_bytes());
        let hex = hasher.finalize().to_hex();
        format!("{}-{}", class.prefix(), &hex[..PSEUDONYM_HEX_DIGITS])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudonyms_are_stable_per_key_and_differ_across_keys_and_classes() {
        let key = PseudonymKey::from_bytes([7; KEY_BYTES]);
        let other = PseudonymKey::from_bytes([8; KEY_BYTES]);
        let host = key.pseudonym(NameClass::Host, "db1.corp.example.com");
        assert_eq!(host, key.pseudonym(NameClass::Host, "DB1.corp.example.com"));
        assert!(host.starts_with("host-") && host.len() == 5 + PSEUDONYM_HEX_DIGITS);
        assert_ne!(
            host,
            other.pseudonym(NameClass::Host, "db1.corp.example.com")
        );
        assert_ne!(
            key.pseudonym(NameClass::User, "alice")[5..],
            key.pseudonym(NameClass::Host, "alice")[5..]
        );
        assert_eq!(
            key.pseudonym(NameClass::Mac, "AA:BB:CC:DD:EE:FF"),
            key.pseudonym(NameClass::Mac, "aa-bb-cc-dd-ee-ff")
        );
    }

    #[test]
    fn keys_round_trip_through_hex_and_bad_keys_are_refused() {
        let key = PseudonymKey::from_bytes([0xab; KEY_BYTES]);
        assert_eq!(PseudonymKey::from_hex(&key.to_hex()).unwrap(), key);
        assert!(PseudonymKey::from_hex("abc").is_err());
        assert!(PseudonymKey::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{key:?}"), "PseudonymKey(…)");
    }
}
