//! The one on-disk form of an ed25519 key, for node keys and people's keys alike: the 32-byte
//! seed as 64 hex digits and a newline. Where the file lives and who may replace it is the
//! caller's business (the agent creates its key once; `grid key new` refuses to overwrite).

use ed25519_dalek::SigningKey;

/// The file's text for `key`.
pub fn to_text(key: &SigningKey) -> String {
    format!("{}\n", hex::encode(key.to_bytes()))
}

/// The key in a file's text; `None` unless it is exactly 64 hex digits (surrounding
/// whitespace aside).
pub fn from_text(text: &str) -> Option<SigningKey> {
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).ok()?;
    Some(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let text = to_text(&key);
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert_eq!(from_text(&text).map(|k| k.to_bytes()), Some(key.to_bytes()));
        assert!(from_text("").is_none());
        assert!(from_text(&text[..63]).is_none());
        assert!(from_text(&format!("{}00", text.trim())).is_none());
        assert!(from_text(&"zz".repeat(32)).is_none());
    }
}
