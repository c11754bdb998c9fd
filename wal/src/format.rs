//! The bytes on disk (see `FORMAT.md`): segment headers and record frames, and their checks.

/// The first 8 bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 8] = *b"HFWALSEG";
/// Bumped when the layout changes incompatibly.
pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_HEADER_BYTES: u64 = 64;
pub const FRAME_HEADER_BYTES: usize = 32;
/// Frames start at, and payloads are padded to, this alignment; rkyv reads payloads in place.
pub const FRAME_ALIGN: usize = 16;
/// The largest payload one record may carry.
pub const RECORD_BYTES_MAX: usize = 1 << 20;

const _: () = assert!((SEGMENT_HEADER_BYTES as usize).is_multiple_of(FRAME_ALIGN));
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(FRAME_ALIGN));

/// A log sequence number: 1 for the first record, then one more for each.
pub type Lsn = u64;

/// Bytes a frame with a payload of `len` bytes takes on disk.
pub const fn frame_bytes(len: usize) -> usize {
    (FRAME_HEADER_BYTES + len).next_multiple_of(FRAME_ALIGN)
}

/// The name of the segment whose first record is `first_lsn`; names sort in LSN order.
pub fn segment_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.wal")
}

pub fn parse_segment_name(name: &str) -> Option<Lsn> {
    let digits = name.strip_suffix(".wal")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

pub fn encode_segment_header(first_lsn: Lsn, capacity: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(SEGMENT_HEADER_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&first_lsn.to_le_bytes());
    h[24..32].copy_from_slice(&capacity.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..60]);
    h[60..64].copy_from_slice(&crc.to_le_bytes());
    h
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub first_lsn: Lsn,
    pub capacity: u64,
}

pub fn decode_segment_header(h: &[u8]) -> Result<SegmentHeader, &'static str> {
    if h.len() < SEGMENT_HEADER_BYTES as usize {
        return Err("segment shorter than its header");
    }
    if h[0..8] != SEGMENT_MAGIC {
        return Err("not a holdfast log segment (bad magic)");
    }
    if u32_at(h, 60) != crc32c::crc32c(&h[0..60]) {
        return Err("segment header checksum mismatch");
    }
    if u32_at(h, 8) != FORMAT_VERSION {
        return Err("unsupported log format version");
    }
    if u32_at(h, 12) as u64 != SEGMENT_HEADER_BYTES {
        return Err("unexpected segment header size");
    }
    Ok(SegmentHeader { first_lsn: u64_at(h, 16), capacity: u64_at(h, 24) })
}

/// Appends one frame to `out` (which must end at a frame boundary).
pub fn encode_frame(out: &mut Vec<u8>, lsn: Lsn, batch_lsn: Lsn, payload: &[u8]) {
    debug_assert!(out.len().is_multiple_of(FRAME_ALIGN));
    debug_assert!(!payload.is_empty() && payload.len() <= RECORD_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lsn.to_le_bytes());
    out.extend_from_slice(&batch_lsn.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(payload);
    out.resize(start + frame_bytes(payload.len()), 0);
    let crc = frame_crc(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The checksum of a frame: its length, then everything after the checksum field through the payload.
fn frame_crc(frame: &[u8]) -> u32 {
    let len = u32_at(frame, 0) as usize;
    crc32c::crc32c_append(crc32c::crc32c(&frame[0..4]), &frame[8..FRAME_HEADER_BYTES + len])
}

/// A frame that passed its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub lsn: Lsn,
    pub batch_lsn: Lsn,
    pub payload: &'a [u8],
    /// Bytes the frame takes, padding included.
    pub bytes: usize,
}

/// Why the bytes at a frame position are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameProblem {
    /// All-zero header: unwritten, preallocated space.
    Empty,
    Truncated,
    BadLength,
    BadChecksum,
    /// Reserved bytes or padding not zero.
    BadPadding,
}

impl FrameProblem {
    pub fn describe(self) -> &'static str {
        match self {
            FrameProblem::Empty => "unwritten space where a record was expected",
            FrameProblem::Truncated => "record runs past the end of the file",
            FrameProblem::BadLength => "record length out of range",
            FrameProblem::BadChecksum => "record checksum mismatch",
            FrameProblem::BadPadding => "record reserved bytes or padding not zero",
        }
    }
}

/// Reads and checks the frame at the start of `bytes`.
pub fn decode_frame(bytes: &[u8]) -> Result<Frame<'_>, FrameProblem> {
    if bytes.len() < FRAME_HEADER_BYTES {
        return Err(if bytes.iter().all(|b| *b == 0) {
            FrameProblem::Empty
        } else {
            FrameProblem::Truncated
        });
    }
    let header = &bytes[..FRAME_HEADER_BYTES];
    if header.iter().all(|b| *b == 0) {
        return Err(FrameProblem::Empty);
    }
    let len = u32_at(header, 0) as usize;
    if len == 0 || len > RECORD_BYTES_MAX {
        return Err(FrameProblem::BadLength);
    }
    let total = frame_bytes(len);
    if bytes.len() < total {
        return Err(FrameProblem::Truncated);
    }
    let frame = &bytes[..total];
    if u32_at(frame, 4) != frame_crc(frame) {
        return Err(FrameProblem::BadChecksum);
    }
    if u64_at(frame, 24) != 0 || frame[FRAME_HEADER_BYTES + len..].iter().any(|b| *b != 0) {
        return Err(FrameProblem::BadPadding);
    }
    let payload = &frame[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + len];
    Ok(Frame { lsn: u64_at(frame, 8), batch_lsn: u64_at(frame, 16), payload, bytes: total })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_pads_to_alignment() {
        let mut out = Vec::new();
        encode_frame(&mut out, 7, 5, b"hello");
        assert_eq!(out.len(), 48);
        let f = decode_frame(&out).unwrap();
        assert_eq!((f.lsn, f.batch_lsn, f.payload, f.bytes), (7, 5, &b"hello"[..], 48));
    }

    #[test]
    fn every_flipped_bit_of_a_frame_is_detected() {
        let mut out = Vec::new();
        encode_frame(&mut out, 1, 1, b"payload of a record");
        for byte in 0..out.len() {
            for bit in 0..8 {
                let mut bad = out.clone();
                bad[byte] ^= 1 << bit;
                assert!(decode_frame(&bad).is_err(), "flip at byte {byte} bit {bit} passed");
            }
        }
    }

    #[test]
    fn zeros_are_empty_space_not_a_frame() {
        assert_eq!(decode_frame(&[0; 64]), Err(FrameProblem::Empty));
        assert_eq!(decode_frame(&[0; 8]), Err(FrameProblem::Empty));
    }

    #[test]
    fn segment_header_round_trips_and_refuses_damage() {
        let h = encode_segment_header(42, 1 << 20);
        assert_eq!(decode_segment_header(&h), Ok(SegmentHeader { first_lsn: 42, capacity: 1 << 20 }));
        let mut bad = h;
        bad[17] ^= 1;
        assert_eq!(decode_segment_header(&bad), Err("segment header checksum mismatch"));
        assert!(decode_segment_header(&[0; 64]).is_err());
    }

    #[test]
    fn segment_names_sort_by_lsn() {
        assert_eq!(segment_name(12), "00000000000000000012.wal");
        assert_eq!(parse_segment_name("00000000000000000012.wal"), Some(12));
        assert_eq!(parse_segment_name("12.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000001x.wal"), None);
    }
}
