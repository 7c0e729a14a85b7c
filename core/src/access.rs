//! Who may do what through the HTTP API: the scopes of API keys and the stored form of a key's
//! secret.
//!
//! Plain values: the key aggregate ([`crate::api_key`]) stores them and the server checks
//! requests against them. Secrets never reach the core; the server draws a secret, hashes it
//! and hands the hash over, so no stored event or read model ever holds a usable credential.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What an API key may do. Scopes are ordered: each includes everything below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Reads: descriptions, listings, histories, the event stream and metrics.
    Read,
    /// Reads, and every change to jobs, commands and thing groups.
    Operator,
    /// Everything, including creating and revoking API keys.
    Admin,
}

impl Scope {
    /// Every scope, lowest first.
    pub const ALL: [Self; 3] = [Self::Read, Self::Operator, Self::Admin];

    /// The wire name: `read`, `operator` or `admin`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// Whether a key of this scope may do what `needed` allows.
    pub fn allows(self, needed: Self) -> bool {
        self >= needed
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SHA-256 digest of a key's secret, stored in place of the secret. It serializes as 64
/// lowercase hexadecimal digits.
///
/// A fast hash is enough because secrets are drawn at random with 256 bits of entropy: no
/// dictionary applies, so a slow password hash would only slow every request down.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SecretHash([u8; 32]);

impl SecretHash {
    /// Wraps a digest.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The digest.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

// Digests are not secrets, but printing them invites copying them into tickets and logs,
// where they help nobody: show a short prefix only.
impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretHash({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

/// Why a stored digest did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a secret hash is 64 hexadecimal digits")]
pub struct SecretHashError;

impl TryFrom<String> for SecretHash {
    type Error = SecretHashError;
    fn try_from(s: String) -> Result<Self, SecretHashError> {
        let bytes = s.as_bytes();
        if bytes.len() != 64 {
            return Err(SecretHashError);
        }
        let mut out = [0u8; 32];
        for (i, pair) in bytes.chunks_exact(2).enumerate() {
            let hi = hex_digit(pair[0]).ok_or(SecretHashError)?;
            let lo = hex_digit(pair[1]).ok_or(SecretHashError)?;
            out[i] = hi << 4 | lo;
        }
        Ok(Self(out))
    }
}

impl From<SecretHash> for String {
    fn from(h: SecretHash) -> String {
        h.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_include_the_lower_ones() {
        assert!(Scope::Admin.allows(Scope::Operator));
        assert!(Scope::Operator.allows(Scope::Read));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Operator));
        assert!(!Scope::Operator.allows(Scope::Admin));
    }

    #[test]
    fn hashes_round_trip_as_lowercase_hex_and_refuse_anything_else() {
        let h = SecretHash::from_bytes([0xab; 32]);
        let s = String::from(h);
        assert_eq!(s, "ab".repeat(32));
        assert_eq!(SecretHash::try_from(s), Ok(h));
        for bad in [
            "",
            "ab",
            &"AB".repeat(32),
            &"zz".repeat(32),
            &"a".repeat(65),
        ] {
            assert_eq!(
                SecretHash::try_from(bad.to_owned()),
                Err(SecretHashError),
                "{bad}"
            );
        }
    }
}
