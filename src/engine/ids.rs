//! Validated names (SKU, sale, user, idempotency key) and reservation ids. A value of these types is
//! always valid: they are checked once, where bytes from outside become engine values, and again when a
//! record is read back from the log.

use crate::limits::{
    CART_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, REASON_CHARS_MAX, SALE_BYTES_MAX, SKU_BYTES_MAX,
    USER_BYTES_MAX,
};
use std::borrow::Borrow;
use std::fmt;

/// Why a name was refused: which kind of name, and what was wrong with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameError {
    pub kind: &'static str,
    pub problem: NameProblem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameProblem {
    Empty,
    TooLong {
        bytes_max: usize,
    },
    TooManyChars {
        chars_max: usize,
    },
    /// The byte at this offset is not allowed in this kind of name.
    BadByte {
        offset: usize,
    },
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.problem {
            NameProblem::Empty => write!(f, "{} must not be empty", self.kind),
            NameProblem::TooLong { bytes_max } => {
                write!(f, "{} is longer than {bytes_max} bytes", self.kind)
            }
            NameProblem::TooManyChars { chars_max } => {
                write!(f, "{} is longer than {chars_max} characters", self.kind)
            }
            NameProblem::BadByte { offset } => {
                write!(f, "{} has a character that is not allowed at byte {offset}", self.kind)
            }
        }
    }
}

impl std::error::Error for NameError {}

/// SKU and sale ids go into URL paths and metric labels: a conservative alphabet.
fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
}

/// Cart ids are user or session ids that go into URL paths: the id alphabet and `@` (emails).
fn is_cart_byte(b: u8) -> bool {
    is_id_byte(b) || b == b'@'
}

/// User ids and idempotency keys come from other systems (UUIDs, emails, opaque tokens): any visible ASCII.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_graphic()
}

fn check(kind: &'static str, s: &str, bytes_max: usize, allowed: fn(u8) -> bool) -> Result<(), NameError> {
    let problem = if s.is_empty() {
        NameProblem::Empty
    } else if s.len() > bytes_max {
        NameProblem::TooLong { bytes_max }
    } else if let Some(offset) = s.bytes().position(|b| !allowed(b)) {
        NameProblem::BadByte { offset }
    } else {
        return Ok(());
    };
    Err(NameError { kind, problem })
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Box<str>);

        impl $name {
            pub fn new(s: &str) -> Result<Self, NameError> {
                check($kind, s, $max, $allowed)?;
                Ok(Self(s.into()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Hashes as the str it wraps, so maps keyed by it can be searched with a `&str`.
        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }
    };
}

name_type!(
    /// A sellable item: 1 to 64 bytes of `[A-Za-z0-9._:-]`.
    SkuId, "sku", SKU_BYTES_MAX, is_id_byte
);
name_type!(
    /// A sale: 1 to 64 bytes of `[A-Za-z0-9._:-]`.
    SaleId, "sale_id", SALE_BYTES_MAX, is_id_byte
);
name_type!(
    /// A buyer, as the checkout service names them: 1 to 128 bytes of visible ASCII.
    UserId, "user_id", USER_BYTES_MAX, is_token_byte
);
name_type!(
    /// A cart, as the caller names it (a user id or a session id): 1 to 128 bytes of
    /// `[A-Za-z0-9._:@-]`, so that it can stand in a URL path as it is.
    CartId, "cart_id", CART_BYTES_MAX, is_cart_byte
);
name_type!(
    /// A client's idempotency key: 1 to 128 bytes of visible ASCII.
    IdempotencyKey, "idempotency_key", IDEMPOTENCY_KEY_BYTES_MAX, is_token_byte
);

/// Why stock was adjusted ("restock", "damaged in warehouse 3"): up to 256 characters, no control
/// characters.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Default)]
pub struct Reason(Box<str>);

impl Reason {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.chars().count() > REASON_CHARS_MAX {
            let problem = NameProblem::TooManyChars { chars_max: REASON_CHARS_MAX };
            return Err(NameError { kind: "reason", problem });
        }
        if let Some((offset, _)) = s.char_indices().find(|(_, c)| c.is_control()) {
            return Err(NameError { kind: "reason", problem: NameProblem::BadByte { offset } });
        }
        Ok(Self(s.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reservation id: the shard that issued it (high 16 bits of `raw`), that shard's sequence number
/// (low 48 bits), and a `tag` that looks random (a keyed function of `raw`, see `tag_for`). The sequence makes ids unique for the
/// life of a data directory (replay restores every shard's sequence); the tag makes them unguessable,
/// so that knowing one's own id tells nothing of the next. Ids issued before tags existed have tag 0
/// and keep their short text form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReservationId {
    raw: u64,
    tag: u64,
}

const SEQ_BITS: u32 = 48;
const SEQ_MASK: u64 = (1 << SEQ_BITS) - 1;
const TEXT_PREFIX: &str = "rsv_";

impl ReservationId {
    pub(crate) fn new(shard: u16, seq: u64, tag: u64) -> Self {
        assert!(seq > 0 && seq <= SEQ_MASK, "sequence {seq} outside 1..2^48");
        Self { raw: (u64::from(shard) << SEQ_BITS) | seq, tag }
    }
    /// The tag of the id a shard issues at `seq`: SipHash-2-4 (a keyed pseudorandom function) of the
    /// raw id under the engine's secret `key`, so that whoever sees any number of ids cannot compute
    /// another's. Never 0, which marks an id from before tags.
    pub(crate) fn tag_for(key: u128, shard: u16, seq: u64) -> u64 {
        use std::hash::Hasher;
        let mut h = siphasher::sip::SipHasher24::new_with_keys(key as u64, (key >> 64) as u64);
        h.write_u64((u64::from(shard) << SEQ_BITS) | seq);
        h.finish().max(1)
    }
    /// The id as stored in the log: its raw sequence and its tag.
    pub fn from_parts(raw: u64, tag: u64) -> Option<Self> {
        (raw & SEQ_MASK != 0).then_some(Self { raw, tag })
    }
    pub fn raw(self) -> u64 {
        self.raw
    }
    pub fn tag(self) -> u64 {
        self.tag
    }
    pub(crate) fn shard(self) -> u16 {
        (self.raw >> SEQ_BITS) as u16
    }
    pub(crate) fn seq(self) -> u64 {
        self.raw & SEQ_MASK
    }
    /// Parses the text form: `rsv_`, 16 lower-case hex digits of the raw id, then 16 of the tag. An id
    /// issued before tags existed is the first 20 characters alone.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = Self::digits(s)?;
        let raw = u64::from_str_radix(&hex[..16], 16).ok()?;
        let tag = match hex.get(16..) {
            Some("") | None => 0,
            // A tag of 0 is written short; its long form is not an id.
            Some(t) => Some(u64::from_str_radix(t, 16).ok()?).filter(|t| *t != 0)?,
        };
        Self::from_parts(raw, tag)
    }

    /// The hex digits of a text in the id's form (`rsv_` and 16 or 32 lower-case hex digits), whether
    /// or not it names an id that can exist (sequence 0, or a long form with tag 0, cannot).
    pub fn digits(s: &str) -> Option<&str> {
        let hex = s.strip_prefix(TEXT_PREFIX)?;
        let form =
            matches!(hex.len(), 16 | 32) && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        form.then_some(hex)
    }

    /// The text form, written by hand: every reserve answers with its id, and the formatter (padded
    /// hex, then a String grown to fit) costs ten times more.
    pub fn text(self) -> IdText {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; ID_TEXT_MAX];
        text[..TEXT_PREFIX.len()].copy_from_slice(TEXT_PREFIX.as_bytes());
        let digits = if self.tag == 0 { 16 } else { 32 };
        for (n, digit) in text[TEXT_PREFIX.len()..][..digits].iter_mut().enumerate() {
            let word = if n < 16 { self.raw } else { self.tag };
            *digit = HEX[(word >> (60 - 4 * (n % 16)) & 0xf) as usize];
        }
        IdText { text, len: (TEXT_PREFIX.len() + digits) as u8 }
    }
}

const ID_TEXT_MAX: usize = TEXT_PREFIX.len() + 32;

/// A reservation id's text, on the stack.
pub struct IdText {
    text: [u8; ID_TEXT_MAX],
    len: u8,
}

impl std::ops::Deref for IdText {
    type Target = str;
    fn deref(&self) -> &str {
        std::str::from_utf8(&self.text[..usize::from(self.len)]).expect("ASCII")
    }
}

impl fmt::Display for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl fmt::Debug for ReservationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_its_alphabet_and_refuses_the_rest() {
        assert!(SkuId::new("tee-shirt_L.red:2").is_ok());
        let e = SkuId::new("").unwrap_err();
        assert_eq!(e.problem, NameProblem::Empty);
        let e = SkuId::new(&"a".repeat(SKU_BYTES_MAX + 1)).unwrap_err();
        assert_eq!(e.problem, NameProblem::TooLong { bytes_max: SKU_BYTES_MAX });
        assert!(SkuId::new(&"a".repeat(SKU_BYTES_MAX)).is_ok());
        let e = SkuId::new("ab/c").unwrap_err();
        assert_eq!(e.problem, NameProblem::BadByte { offset: 2 });
        assert!(SkuId::new("a\u{7}").is_err());
        assert!(SkuId::new("é").is_err());
    }

    #[test]
    fn user_and_key_take_visible_ascii_only() {
        assert!(UserId::new("alice@example.com").is_ok());
        assert!(UserId::new("has space").is_err());
        assert!(IdempotencyKey::new("550e8400-e29b-41d4-a716-446655440000").is_ok());
        assert!(IdempotencyKey::new("tab\there").is_err());
    }

    #[test]
    fn reason_refuses_control_characters_and_length() {
        assert!(Reason::new("restock from warehouse 3 — pallet 7").is_ok());
        assert!(Reason::new("line\nbreak").is_err());
        assert!(Reason::new(&"x".repeat(REASON_CHARS_MAX + 1)).is_err());
        assert!(Reason::new(&"é".repeat(REASON_CHARS_MAX)).is_ok(), "characters, not bytes");
    }

    #[test]
    fn reservation_id_round_trips_through_text() {
        let id = ReservationId::new(3, 42, 0x0123_4567_89ab_cdef);
        assert_eq!(id.shard(), 3);
        assert_eq!(id.seq(), 42);
        let text = id.to_string();
        assert_eq!(text, "rsv_000300000000002a0123456789abcdef");
        assert_eq!(ReservationId::parse(&text), Some(id));
        // An id from before tags: the short form, tag 0.
        let old = ReservationId::new(3, 42, 0);
        assert_eq!(old.to_string(), "rsv_000300000000002a");
        assert_eq!(ReservationId::parse("rsv_000300000000002a"), Some(old));
        assert_ne!(ReservationId::parse("rsv_000300000000002a"), Some(id), "the tag is part of the id");
        assert_eq!(ReservationId::parse("rsv_000300000000002a0000000000000000"), None);
        assert_eq!(ReservationId::parse("rsv_000300000000002A"), None);
        assert_eq!(ReservationId::parse("rsv_000300000000002a0123456789abcdeF"), None);
        assert_eq!(ReservationId::parse("rsv_0000000000000000"), None);
        assert_eq!(ReservationId::parse("rsv_000300000000002a0123"), None);
        assert_eq!(ReservationId::parse("rsv_12"), None);
        assert_eq!(ReservationId::parse("000300000000002a"), None);
    }

    #[test]
    fn tags_differ_by_id_and_by_key_and_are_never_zero() {
        let tags: std::collections::HashSet<u64> =
            (1..=1000).map(|seq| ReservationId::tag_for(7, 0, seq)).collect();
        assert_eq!(tags.len(), 1000);
        assert!(!tags.contains(&0));
        assert_eq!(
            ReservationId::tag_for(7, 0, 1),
            ReservationId::tag_for(7, 0, 1),
            "a function of key and id"
        );
        assert_ne!(ReservationId::tag_for(7, 0, 1), ReservationId::tag_for(8, 0, 1));
        assert_ne!(ReservationId::tag_for(7, 0, 1), ReservationId::tag_for(7, 1, 1));
    }
}
