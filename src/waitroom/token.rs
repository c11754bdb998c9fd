//! Tickets and admission tokens: the claims (kind, sale, user, expiry) and an HMAC-SHA256 tag under the
//! server's key, base64url. A changed byte, a token made for another sale or user, or one past its
//! expiry is refused. The key is made once per data directory, so tokens outlive a restart.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::io::Write;
use std::path::Path;

/// The key's file in the data directory.
pub const KEY_FILE: &str = "waitroom.key";
const KEY_BYTES: usize = 32;
/// 128 bits of tag: forging one is out of reach, and tokens stay short.
const TAG_BYTES: usize = 16;
const VERSION: u8 = 1;
/// The longest token: version, kind, expiry, two lengths, names at their limits, tag.
pub const TOKEN_CHARS_MAX: usize = (2 + 8 + 2 + 64 + 128 + TAG_BYTES) * 4 / 3 + 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A place in the queue: lets its holder poll.
    Ticket = 1,
    /// Admission: lets its holder reserve in the sale until it expires.
    Admission = 2,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sale: String,
    pub user: String,
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    /// The tag does not match: changed, or not made by this server.
    Forged,
    /// A ticket where an admission was needed, or the other way round.
    WrongKind,
    ForAnotherSale,
    ForAnotherUser,
    Expired {
        at_ms: u64,
    },
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenError::Malformed => f.write_str("is not a token this server issues"),
            TokenError::Forged => f.write_str("does not carry this server's signature"),
            TokenError::WrongKind => f.write_str("is the wrong kind of token"),
            TokenError::ForAnotherSale => f.write_str("was issued for another sale"),
            TokenError::ForAnotherUser => f.write_str("was issued to another user"),
            TokenError::Expired { at_ms } => write!(f, "expired at {}", crate::clock::rfc3339(*at_ms)),
        }
    }
}

pub struct Signer {
    key: [u8; KEY_BYTES],
}

impl Signer {
    pub fn new(key: [u8; KEY_BYTES]) -> Self {
        Signer { key }
    }

    /// The key of the data directory `dir`, made (random, mode 0600, synced) if it has none yet.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Signer> {
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                crate::files::check_private(&path)?;
                let key = bytes.try_into().map_err(|_| {
                    std::io::Error::other(format!("{} is not a {KEY_BYTES}-byte key", path.display()))
                })?;
                return Ok(Signer { key });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut key = [0u8; KEY_BYTES];
        getrandom::fill(&mut key).map_err(std::io::Error::other)?;
        // Written beside, synced, then renamed and the directory synced: a crash leaves no half key.
        let temporary = dir.join(format!("{KEY_FILE}.new"));
        let mut file = crate::files::private_file(&temporary)?;
        file.write_all(&key)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        std::fs::File::open(dir)?.sync_all()?;
        Ok(Signer { key })
    }

    fn tag(&self, body: &[u8]) -> [u8; TAG_BYTES] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        let full = mac.finalize().into_bytes();
        full[..TAG_BYTES].try_into().expect("SHA-256 is longer than the tag")
    }

    pub fn issue(&self, kind: Kind, claims: &Claims) -> String {
        let mut body = Vec::with_capacity(16 + claims.sale.len() + claims.user.len() + TAG_BYTES);
        body.extend_from_slice(&[VERSION, kind as u8]);
        body.extend_from_slice(&claims.expires_at_ms.to_le_bytes());
        for name in [&claims.sale, &claims.user] {
            body.push(u8::try_from(name.len()).expect("names are shorter than 256 bytes"));
            body.extend_from_slice(name.as_bytes());
        }
        let tag = self.tag(&body);
        body.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(body)
    }

    /// The claims of `token` if it is genuine, of `kind`, for `sale` and not expired at `now_ms`.
    pub fn verify(&self, kind: Kind, token: &str, sale: &str, now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_CHARS_MAX {
            return Err(TokenError::Malformed);
        }
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        let split = bytes.len().checked_sub(TAG_BYTES).ok_or(TokenError::Malformed)?;
        let (body, tag) = bytes.split_at(split);
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(body);
        mac.verify_truncated_left(tag).map_err(|_| TokenError::Forged)?;
        let claims = parse(body).ok_or(TokenError::Malformed)?;
        if body[1] != kind as u8 {
            return Err(TokenError::WrongKind);
        }
        if claims.sale != sale {
            return Err(TokenError::ForAnotherSale);
        }
        if now_ms >= claims.expires_at_ms {
            return Err(TokenError::Expired { at_ms: claims.expires_at_ms });
        }
        Ok(claims)
    }
}

fn parse(body: &[u8]) -> Option<Claims> {
    let ([version, _kind], rest) = body.split_first_chunk::<2>()?;
    if *version != VERSION {
        return None;
    }
    let (expiry, mut rest) = rest.split_first_chunk::<8>()?;
    let mut name = || {
        let (&len, tail) = rest.split_first()?;
        let (name, tail) = tail.split_at_checked(usize::from(len))?;
        rest = tail;
        String::from_utf8(name.to_vec()).ok()
    };
    let (sale, user) = (name()?, name()?);
    rest.is_empty().then_some(Claims { sale, user, expires_at_ms: u64::from_le_bytes(*expiry) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        Signer::load_or_create(dir.path()).expect("made");
        let path = dir.path().join(KEY_FILE);
        assert_eq!(std::fs::metadata(&path).expect("key").permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let refused = Signer::load_or_create(dir.path()).err().expect("refused");
        assert!(refused.to_string().contains("chmod 600"), "{refused}");
    }

    fn claims() -> Claims {
        Claims { sale: "noon".into(), user: "ada@example.com".into(), expires_at_ms: 5_000 }
    }

    #[test]
    fn a_genuine_token_verifies_and_every_tampering_is_caught() {
        let signer = Signer::new([7; KEY_BYTES]);
        let token = signer.issue(Kind::Admission, &claims());
        assert_eq!(signer.verify(Kind::Admission, &token, "noon", 4_999), Ok(claims()));
        assert_eq!(
            signer.verify(Kind::Admission, &token, "noon", 5_000),
            Err(TokenError::Expired { at_ms: 5_000 })
        );
        assert_eq!(signer.verify(Kind::Admission, &token, "dusk", 0), Err(TokenError::ForAnotherSale));
        assert_eq!(signer.verify(Kind::Ticket, &token, "noon", 0), Err(TokenError::WrongKind));
        let other = Signer::new([8; KEY_BYTES]);
        assert_eq!(other.verify(Kind::Admission, &token, "noon", 0), Err(TokenError::Forged));
        // Every single changed character is refused.
        let chars: Vec<char> = token.chars().collect();
        for i in 0..chars.len() {
            let mut changed = chars.clone();
            changed[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let changed: String = changed.into_iter().collect();
            assert!(signer.verify(Kind::Admission, &changed, "noon", 0).is_err(), "changed at {i}");
        }
        for bad in ["", "!!!", "AAAA", &"A".repeat(TOKEN_CHARS_MAX + 1)] {
            assert!(signer.verify(Kind::Admission, bad, "noon", 0).is_err());
        }
    }

    #[test]
    fn the_key_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Signer::load_or_create(dir.path()).expect("made");
        let token = first.issue(Kind::Ticket, &claims());
        let again = Signer::load_or_create(dir.path()).expect("loaded");
        assert_eq!(again.verify(Kind::Ticket, &token, "noon", 0), Ok(claims()));
    }
}
