//! A guest's serial console through the tree (`banyan vm console HOST:NAME`): the bytes that go
//! down (keys, sealed by the root) and up (what the guest printed, sealed by its host).
//!
//! A console session is one operator order ([`crate::action::VmOp::Console`]) that keeps running
//! on the host: its executor holds the guest's serial socket and sends what it reads up as
//! [`ConsoleOutput`] chunks ([`crate::wire::Answer::Console`]), until the receipt ends it. Keys
//! travel as [`ConsoleInput`] in [`crate::wire::CommandBody::ConsoleInput`], routed down by
//! targets like an order. Both are numbered (`seq`): the host takes input only in rising order,
//! so a relay can neither replay keys nor reorder them, and the root takes output once and in
//! order. An empty input is a keep-alive: a host that hears nothing from the root for
//! [`CONSOLE_IDLE_MS`] ends the session itself, so a vanished root leaves no session open.
//!
//! What it is not: no I/O; the session's rules (one writer, readers, audit) are the root's.

use crate::action::validate_order_id;
use serde::{Deserialize, Serialize};

/// Most bytes of output in one chunk (a host sends more as more chunks).
pub const MAX_CONSOLE_CHUNK: usize = 16 * 1024;
/// Most bytes of keys in one input message.
pub const MAX_CONSOLE_INPUT: usize = 4 * 1024;
/// A host ends a console session when the root sent nothing (keys or keep-alive) for this long.
pub const CONSOLE_IDLE_MS: u64 = 30_000;
/// How often the root sends a keep-alive to a console session when nobody types.
pub const CONSOLE_KEEPALIVE_MS: u64 = 5_000;
/// The default and longest life of one console session.
pub const DEFAULT_CONSOLE_SESSION_MS: u64 = 8 * 3600 * 1000;
pub const MAX_CONSOLE_SESSION_MS: u64 = 24 * 3600 * 1000;

/// Keys for a running console session, sealed by the root ([`crate::seal::Purpose::ConsoleInput`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleInput {
    /// The id of the console's order.
    pub order: String,
    /// The host the session runs on.
    pub node: String,
    /// From 1, rising by one per message of the session: a host takes each number once.
    pub seq: u64,
    /// Bytes to type; empty: a keep-alive.
    pub bytes: Vec<u8>,
    /// End the session (after typing `bytes`).
    pub close: bool,
}

impl ConsoleInput {
    pub fn validate(&self) -> Result<(), String> {
        validate_order_id(&self.order)?;
        if self.bytes.len() > MAX_CONSOLE_INPUT {
            return Err(format!(
                "console input of {} bytes: at most {MAX_CONSOLE_INPUT} per message",
                self.bytes.len()
            ));
        }
        if self.seq == 0 {
            return Err("console input numbers start at 1".into());
        }
        Ok(())
    }
}

/// What a guest printed on its console, sealed by its host ([`crate::seal::Purpose::ConsoleOutput`]).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsoleOutput {
    pub order: String,
    pub node: String,
    /// From 0, rising by one per chunk of the session.
    pub seq: u64,
    pub bytes: Vec<u8>,
    /// Bytes the host dropped before this chunk because the way up was too slow.
    pub skipped: u64,
}

impl ConsoleOutput {
    pub fn validate(&self) -> Result<(), String> {
        validate_order_id(&self.order)?;
        if self.bytes.len() > MAX_CONSOLE_CHUNK {
            return Err(format!(
                "console chunk of {} bytes: at most {MAX_CONSOLE_CHUNK}",
                self.bytes.len()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::{Purpose, Signer, Verifier};

    #[test]
    fn console_messages_round_trip_and_are_bounded() {
        let input = ConsoleInput {
            order: "0123456789abcdef".into(),
            node: "cn1".into(),
            seq: 1,
            bytes: b"echo $((6*7))\r".to_vec(),
            close: false,
        };
        input.validate().unwrap();
        let bytes = postcard::to_stdvec(&input).unwrap();
        assert_eq!(postcard::from_bytes::<ConsoleInput>(&bytes).unwrap(), input);
        let big = ConsoleInput {
            bytes: vec![b'x'; MAX_CONSOLE_INPUT + 1],
            ..input.clone()
        };
        assert!(big.validate().unwrap_err().contains("at most"));
        assert!(ConsoleInput { seq: 0, ..input }.validate().is_err());

        let output = ConsoleOutput {
            order: "0123456789abcdef".into(),
            node: "cn1".into(),
            seq: 0,
            bytes: vec![0, 0xff, b'4', b'2'],
            skipped: 3,
        };
        output.validate().unwrap();
        let bytes = postcard::to_stdvec(&output).unwrap();
        assert_eq!(
            postcard::from_bytes::<ConsoleOutput>(&bytes).unwrap(),
            output
        );
        assert!(ConsoleOutput {
            bytes: vec![0; MAX_CONSOLE_CHUNK + 1],
            ..output
        }
        .validate()
        .is_err());
    }

    #[test]
    fn console_messages_travel_in_frames() {
        use crate::wire::{Answer, Command, CommandBody, Msg, Outcome};
        let sealed = crate::seal::Sealed {
            payload: vec![1, 2, 3],
            sig: vec![4, 5],
        };
        for msg in [
            Msg::Command(Command {
                id: 7,
                targets: vec!["cn1".into()],
                body: CommandBody::ConsoleInput(sealed.clone()),
            }),
            Msg::Outcome(Outcome {
                id: 7,
                results: vec![("cn1".into(), Ok(Answer::Console(sealed.clone())))],
            }),
        ] {
            let bytes = crate::frame::encode(&msg).unwrap();
            assert_eq!(crate::frame::decode::<Msg>(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn console_seals_do_not_pass_for_orders_or_output_lines() {
        let ca = crate::identity::ClusterCa::generate().unwrap();
        let signer = Signer::from_pem(&ca.key_pem()).unwrap();
        let v = Verifier::from_cert(&ca.cert_der(), "the cluster CA").unwrap();
        let input = ConsoleInput {
            order: "0123456789abcdef".into(),
            node: "cn1".into(),
            seq: 1,
            ..ConsoleInput::default()
        };
        let sealed = signer.seal(Purpose::ConsoleInput, &input).unwrap();
        assert_eq!(
            v.open::<ConsoleInput>(Purpose::ConsoleInput, &sealed)
                .unwrap(),
            input
        );
        for other in [
            Purpose::Order,
            Purpose::Output,
            Purpose::ConsoleOutput,
            Purpose::Receipt,
        ] {
            assert!(v.open::<ConsoleInput>(other, &sealed).is_err());
        }
    }
}
