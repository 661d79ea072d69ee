//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes of postcard.
//!
//! Every stream of the mesh opens with a fixed 8-byte [`Greeting`] (magic and protocol version) that
//! any version of banyan can read, so a peer speaking another version gets a clear refusal instead
//! of a decoding error. After it, every message is one frame no larger than [`MAX_FRAME`].

use serde::{de::DeserializeOwned, Serialize};

/// Largest frame accepted, in bytes of payload. Large enough for a full subtree membership list of
/// 100,000 nodes, small enough that a hostile peer cannot make a daemon allocate without bound.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// The magic that opens every banyan stream.
pub const MAGIC: [u8; 4] = *b"BNYN";

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame of {0} bytes is larger than the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    #[error("frame is truncated: expected {expected} bytes, got {got}")]
    Truncated { expected: usize, got: usize },
    #[error("frame does not decode as a banyan message: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
    #[error("greeting is truncated: got {0} of its 8 bytes (not a banyan peer?)")]
    ShortGreeting(usize),
    #[error("peer is not speaking the banyan protocol (bad greeting magic)")]
    BadMagic,
    #[error("peer speaks banyan protocol version {theirs}, this program speaks version {ours}; run the same banyan release on both ends")]
    Version { ours: u16, theirs: u16 },
}

/// The first 8 bytes of every stream: magic, protocol version, and 2 reserved bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Greeting {
    pub version: u16,
}

impl Greeting {
    pub fn encode(&self) -> [u8; 8] {
        let v = self.version.to_be_bytes();
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], 0, 0]
    }

    /// Decodes a greeting and checks it speaks `ours`.
    pub fn check(bytes: &[u8; 8], ours: u16) -> Result<Greeting, FrameError> {
        if bytes[..4] != MAGIC {
            return Err(FrameError::BadMagic);
        }
        let theirs = u16::from_be_bytes([bytes[4], bytes[5]]);
        if theirs != ours {
            return Err(FrameError::Version { ours, theirs });
        }
        Ok(Greeting { version: theirs })
    }
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    let body =
        postcard::to_extend(msg, Vec::new()).map_err(|e| FrameError::Encode(e.to_string()))?;
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    out[..4].copy_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Reads the length prefix and checks it against [`MAX_FRAME`] before anything is allocated.
pub fn body_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(len)
}

/// Decodes a frame's body (without its prefix). Trailing bytes are refused: a frame is one message.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| FrameError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Decode(format!(
            "{} trailing bytes after the message",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Decodes one complete frame held in `bytes` (prefix included).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FrameError> {
    if bytes.len() < 4 {
        return Err(FrameError::Truncated {
            expected: 4,
            got: bytes.len(),
        });
    }
    let len = body_len([bytes[0], bytes[1], bytes[2], bytes[3]])?;
    let body = &bytes[4..];
    if body.len() < len {
        return Err(FrameError::Truncated {
            expected: len,
            got: body.len(),
        });
    }
    if body.len() > len {
        return Err(FrameError::Decode(format!(
            "{} bytes after the frame",
            body.len() - len
        )));
    }
    decode_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Msg, PROTOCOL_VERSION};

    #[test]
    fn a_message_survives_a_round_trip() {
        let msg = Msg::Heartbeat { depth: 3 };
        let bytes = encode(&msg).unwrap();
        assert_eq!(decode::<Msg>(&bytes).unwrap(), msg);
    }

    #[test]
    fn oversized_lengths_are_refused_before_allocation() {
        let prefix = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert_eq!(body_len(prefix), Err(FrameError::TooLarge(MAX_FRAME + 1)));
        assert_eq!(
            body_len(u32::MAX.to_be_bytes()),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
    }

    #[test]
    fn truncated_frames_are_refused() {
        let bytes = encode(&Msg::Heartbeat { depth: 300 }).unwrap();
        for cut in 0..bytes.len() {
            assert!(
                decode::<Msg>(&bytes[..cut]).is_err(),
                "cut at {cut} decoded"
            );
        }
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        for seed in 0u32..2000 {
            let mut x = seed.wrapping_mul(2654435761);
            let body: Vec<u8> = (0..(seed % 64))
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode_body::<Msg>(&body);
        }
    }

    #[test]
    fn another_version_is_refused_with_both_numbers() {
        let theirs = Greeting {
            version: PROTOCOL_VERSION + 1,
        }
        .encode();
        let err = Greeting::check(&theirs, PROTOCOL_VERSION).unwrap_err();
        assert_eq!(
            err,
            FrameError::Version {
                ours: PROTOCOL_VERSION,
                theirs: PROTOCOL_VERSION + 1
            }
        );
        assert!(err.to_string().contains("same banyan release"));
        assert_eq!(
            Greeting::check(b"GET / HT", PROTOCOL_VERSION),
            Err(FrameError::BadMagic)
        );
    }
}
