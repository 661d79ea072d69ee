//! Output that travels while a command runs (`banyan exec -L`): the tap a command's pipes are
//! copied to, and the batching of what comes out of it into complete lines.
//!
//! The agent sends a running command's lines up now and then rather than every read: a command
//! that prints a line a millisecond must not turn into a message a millisecond through the tree.
//! Only complete lines travel; the rest waits for its newline or for the result, which carries
//! the whole output (capped) all the same. What is not here: signing and sending (the shell does
//! that with the node key, as for receipts).

use std::time::Duration;
use tokio::sync::mpsc;

/// Which pipe bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Where a command's kept output is copied as it is read.
pub type OutputTap = mpsc::UnboundedSender<(Stream, Vec<u8>)>;

/// How often a running command's new lines go up.
pub const FLUSH_EVERY: Duration = Duration::from_millis(250);

/// A line longer than this goes up without waiting for its end.
const LONGEST_LINE: usize = 64 * 1024;

/// Bytes read but not sent yet, per stream.
#[derive(Debug, Default)]
pub struct LineBatch {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl LineBatch {
    pub fn push(&mut self, stream: Stream, bytes: &[u8]) {
        match stream {
            Stream::Stdout => self.stdout.extend_from_slice(bytes),
            Stream::Stderr => self.stderr.extend_from_slice(bytes),
        }
    }

    /// The complete lines of each stream (stdout, stderr), taken out; `None` when there are none.
    pub fn take_lines(&mut self) -> Option<(String, String)> {
        let out = complete_lines(&mut self.stdout);
        let err = complete_lines(&mut self.stderr);
        (!out.is_empty() || !err.is_empty()).then_some((out, err))
    }
}

/// Takes the bytes up to and including the last newline (or everything, past [`LONGEST_LINE`]).
/// A newline never sits inside a UTF-8 sequence, so the lossy text of the parts is the lossy
/// text of the whole.
fn complete_lines(buf: &mut Vec<u8>) -> String {
    let end = match buf.iter().rposition(|b| *b == b'\n') {
        Some(i) => i + 1,
        None if buf.len() > LONGEST_LINE => buf.len(),
        None => return String::new(),
    };
    let rest = buf.split_off(end);
    let lines = std::mem::replace(buf, rest);
    String::from_utf8_lossy(&lines).into_owned()
}

/// Reads the tap until every sender is gone, handing batches of complete lines to `send` every
/// [`FLUSH_EVERY`], numbered from 0. The last partial line is not sent: the result carries it.
pub async fn batch_lines(
    mut rx: mpsc::UnboundedReceiver<(Stream, Vec<u8>)>,
    mut send: impl FnMut(u32, String, String),
) {
    let mut batch = LineBatch::default();
    let mut seq = 0u32;
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let open = tokio::select! {
            got = rx.recv() => match got {
                Some((stream, bytes)) => {
                    batch.push(stream, &bytes);
                    continue;
                }
                None => false,
            },
            _ = tick.tick() => true,
        };
        if let Some((out, err)) = batch.take_lines() {
            send(seq, out, err);
            seq = seq.saturating_add(1);
        }
        if !open {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_are_taken() {
        let mut b = LineBatch::default();
        b.push(Stream::Stdout, b"one\ntw");
        b.push(Stream::Stderr, b"warn");
        assert_eq!(b.take_lines(), Some(("one\n".into(), String::new())));
        assert_eq!(b.take_lines(), None);
        b.push(Stream::Stdout, b"o\nthree\nfo");
        b.push(Stream::Stderr, b"ing\n");
        assert_eq!(
            b.take_lines(),
            Some(("two\nthree\n".into(), "warning\n".into()))
        );
        // A character split between two reads comes out whole.
        b.push(Stream::Stdout, "ur é".as_bytes().split_at(4).0);
        b.push(Stream::Stdout, &"ur é\n".as_bytes()[4..]);
        assert_eq!(b.take_lines(), Some(("four é\n".into(), String::new())));
    }

    #[test]
    fn a_very_long_line_goes_without_its_end() {
        let mut b = LineBatch::default();
        b.push(Stream::Stdout, &vec![b'x'; LONGEST_LINE + 1]);
        let (out, _) = b.take_lines().expect("the long line");
        assert_eq!(out.len(), LONGEST_LINE + 1);
    }

    #[tokio::test]
    async fn batches_are_numbered_and_the_partial_tail_is_left_to_the_result() {
        let (tx, rx) = mpsc::unbounded_channel();
        let (sent_tx, mut sent) = mpsc::unbounded_channel();
        let task = tokio::spawn(batch_lines(rx, move |seq, out, err| {
            let _ = sent_tx.send((seq, out, err));
        }));
        tx.send((Stream::Stdout, b"a\n".to_vec())).unwrap();
        // The first batch has gone before the rest is written: it can hold only "a".
        let first = sent.recv().await.expect("a first batch");
        assert_eq!(first, (0, "a\n".to_string(), String::new()));
        tx.send((Stream::Stdout, b"b\nc".to_vec())).unwrap();
        drop(tx);
        task.await.unwrap();
        let second = sent.recv().await.expect("a second batch");
        assert_eq!(second, (1, "b\n".to_string(), String::new()));
        assert_eq!(sent.recv().await, None, "the partial tail was sent");
    }
}
