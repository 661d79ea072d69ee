//! The node's open guest console sessions (`banyan vm console`), as the shell keeps them: which
//! order holds which guest's console, and the checks keys pass before they are typed.
//!
//! A session is opened when a console order is admitted (at most [`MAX_SESSIONS`] per node and
//! one per guest: QEMU serves one client on a serial socket) and closed when its order is done.
//! Keys ([`ConsoleInput`], whose seal the order gate checked) are taken only for a session that
//! is open here and only with a number above the last one taken, so keys a relay replays or
//! reorders are refused. What is not here: the socket (the `vm` executor holds it).

use crate::actions::{ConsoleChunk, ConsoleKeys, ConsoleLink};
use banyan_protocol::console::ConsoleInput;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Most console sessions open at once on one node.
pub const MAX_SESSIONS: usize = 16;
/// Keys messages a session may be behind by before more are refused.
const KEYS_BACKLOG: usize = 64;
/// Output chunks a session may be ahead of the way up by before it drops output.
pub const OUTPUT_BACKLOG: usize = 64;

#[derive(Default)]
pub struct ConsoleSessions {
    by_order: HashMap<String, Session>,
}

struct Session {
    guest: String,
    keys: mpsc::Sender<ConsoleKeys>,
    last_seq: u64,
}

impl ConsoleSessions {
    /// Opens a session of `order` on `guest`: the link for the executor and the receiving end
    /// of its output. Refused over the node's limit or when the guest's console is held.
    pub fn open(
        &mut self,
        order: &str,
        guest: &str,
    ) -> Result<(ConsoleLink, mpsc::Receiver<ConsoleChunk>), String> {
        if let Some((held_by, _)) = self.by_order.iter().find(|(_, s)| s.guest == guest) {
            return Err(format!(
                "the console of {guest} is open already (order {held_by}); join that session through the root"
            ));
        }
        if self.by_order.len() >= MAX_SESSIONS {
            return Err(format!(
                "this node has {MAX_SESSIONS} console sessions open, its limit; close one first"
            ));
        }
        let (keys_tx, keys_rx) = mpsc::channel(KEYS_BACKLOG);
        let (out_tx, out_rx) = mpsc::channel(OUTPUT_BACKLOG);
        self.by_order.insert(
            order.to_string(),
            Session {
                guest: guest.to_string(),
                keys: keys_tx,
                last_seq: 0,
            },
        );
        let link = ConsoleLink {
            keys: Arc::new(Mutex::new(Some(keys_rx))),
            output: out_tx,
        };
        Ok((link, out_rx))
    }

    /// Hands checked keys to their session. `Err` says why they were not taken.
    pub fn input(&mut self, input: ConsoleInput) -> Result<(), String> {
        let s = self.by_order.get_mut(&input.order).ok_or_else(|| {
            format!(
                "console input refused: no console session of order {} is open here",
                input.order
            )
        })?;
        if input.seq <= s.last_seq {
            return Err(format!(
                "console input refused: number {} after {} (replayed or reordered)",
                input.seq, s.last_seq
            ));
        }
        s.last_seq = input.seq;
        s.keys
            .try_send((input.bytes, input.close))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => format!(
                    "console input dropped: the session of {} is {KEYS_BACKLOG} messages behind",
                    s.guest
                ),
                mpsc::error::TrySendError::Closed(_) => {
                    format!("console input refused: the session of {} ended", s.guest)
                }
            })
    }

    /// The order is done: its session goes (the executor has let the socket go).
    pub fn close(&mut self, order: &str) {
        self.by_order.remove(order);
    }

    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(order: &str, seq: u64, bytes: &[u8]) -> ConsoleInput {
        ConsoleInput {
            order: order.into(),
            node: "cn1".into(),
            seq,
            bytes: bytes.to_vec(),
            close: false,
        }
    }

    #[test]
    fn keys_go_to_their_session_once_and_in_order() {
        let mut s = ConsoleSessions::default();
        let (link, _out) = s.open("0000000000000001", "web").unwrap();
        let mut rx = link.keys.lock().unwrap().take().unwrap();
        s.input(keys("0000000000000001", 1, b"a")).unwrap();
        s.input(keys("0000000000000001", 3, b"b")).unwrap();
        assert!(s
            .input(keys("0000000000000001", 3, b"b"))
            .unwrap_err()
            .contains("replayed"));
        assert!(s
            .input(keys("0000000000000001", 2, b"x"))
            .unwrap_err()
            .contains("replayed"));
        assert!(s
            .input(keys("00000000000000ff", 4, b"x"))
            .unwrap_err()
            .contains("no console session"));
        assert_eq!(rx.try_recv().unwrap(), (b"a".to_vec(), false));
        assert_eq!(rx.try_recv().unwrap(), (b"b".to_vec(), false));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn one_session_per_guest_and_a_limit_per_node() {
        let mut s = ConsoleSessions::default();
        s.open("0000000000000001", "web").unwrap();
        assert!(s
            .open("0000000000000002", "web")
            .unwrap_err()
            .contains("open already"));
        for i in 1..MAX_SESSIONS {
            s.open(&format!("{:016x}", 100 + i), &format!("g{i}"))
                .unwrap();
        }
        assert!(s
            .open("00000000000000aa", "last")
            .unwrap_err()
            .contains("limit"));
        s.close("0000000000000001");
        assert_eq!(s.len(), MAX_SESSIONS - 1);
        s.open("0000000000000003", "web").unwrap();
    }
}
