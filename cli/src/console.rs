//! `banyan console NODE` and `banyan vm console NODE:NAME`: a node's or a guest's serial console,
//! through the root, in this terminal (`NODE:NAME` is `GET /console/NODE:NAME`).
//!
//! The root turns `GET /console/NODE` (with `Upgrade: banyan-console`) into the console's raw
//! byte stream. Here: the terminal in raw mode (when stdin is one), keys to the root, output to
//! stdout, and `&.` at the start of a line to leave, as conman has it (ipmitool's own `~.` is
//! the root's business, so it never reaches the root's SOL client by accident: `~` passes).
//! Without a terminal (a script), stdin is sent as it comes and its end leaves.

use std::io::{self, IsTerminal, Read, Write};
use std::net::{Shutdown, TcpStream};

use crate::api::{segment, Auth, CliError, Client, EXIT_OK};

/// Longest response head accepted from the root.
const MAX_HEAD: usize = 64 * 1024;

/// What one typed byte does, as the escape reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Key {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Held: perhaps the start of the escape.
    Hold,
    /// `&.` at the start of a line: leave.
    Leave,
}

/// Finds `&.` at the start of a line in what is typed.
#[derive(Debug)]
pub struct Escape {
    line_start: bool,
    held: bool,
}

impl Default for Escape {
    fn default() -> Self {
        Escape {
            line_start: true,
            held: false,
        }
    }
}

impl Escape {
    pub fn key(&mut self, b: u8) -> Key {
        if self.held {
            self.held = false;
            if b == b'.' {
                return Key::Leave;
            }
            self.line_start = b == b'\r' || b == b'\n';
            return Key::Send(vec![b'&', b]);
        }
        if self.line_start && b == b'&' {
            self.held = true;
            return Key::Hold;
        }
        self.line_start = b == b'\r' || b == b'\n';
        Key::Send(vec![b])
    }
}

/// The terminal in raw mode until dropped.
struct RawMode(Option<nix::sys::termios::Termios>);

impl RawMode {
    fn enter() -> RawMode {
        use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg};
        let stdin = io::stdin();
        if !stdin.is_terminal() {
            return RawMode(None);
        }
        let Ok(saved) = tcgetattr(&stdin) else {
            return RawMode(None);
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        if tcsetattr(&stdin, SetArg::TCSANOW, &raw).is_err() {
            return RawMode(None);
        }
        RawMode(Some(saved))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                saved,
            );
        }
    }
}

pub fn console(client: &Client, node: &str, read_only: bool) -> Result<u8, CliError> {
    let base = client.base();
    let unreachable = |detail: String| CliError::Unreachable {
        url: base.to_string(),
        detail,
    };
    let Some(hostport) = base.strip_prefix("http://") else {
        return Err(CliError::Usage(format!(
            "the console speaks plain HTTP to the root (or through an ssh -L tunnel); {base} is not http://"
        )));
    };
    let hostport = hostport.split('/').next().unwrap_or(hostport);
    let bearer = client.bearer(Auth::Required)?.unwrap_or_default();
    let path = format!(
        "/console/{}{}",
        segment(node),
        if read_only { "?read_only=1" } else { "" }
    );
    let mut stream = TcpStream::connect(hostport).map_err(|e| unreachable(e.to_string()))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: Upgrade\r\nUpgrade: banyan-console\r\nAuthorization: {bearer}\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| unreachable(e.to_string()))?;
    let (status, headers, early) = read_head(&mut stream).map_err(&unreachable)?;
    if status != 101 {
        let length = headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0)
            .min(MAX_HEAD);
        let mut body = early;
        while body.len() < length {
            let mut buf = vec![0u8; length - body.len()];
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&body);
        return match client.answer(&path, status, &text) {
            Err(e) => Err(e),
            Ok(_) => Err(CliError::Api {
                status,
                error: "no console stream".into(),
                detail: format!(": the root answered {status} instead of switching protocols"),
            }),
        };
    }
    let mut out = io::stdout();
    let _ = out.write_all(&early);
    let _ = out.flush();
    let raw = RawMode::enter();
    let mut from_root = stream.try_clone().map_err(|e| unreachable(e.to_string()))?;
    let printer = std::thread::spawn(move || {
        let mut out = io::stdout();
        let mut buf = [0u8; 4096];
        loop {
            match from_root.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    let _ = out.flush();
                }
            }
        }
    });
    // Keys are read on their own thread, so that a console the root ends (the guest stopped)
    // ends this client too, without waiting for a key.
    let (keys_tx, keys) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut stdin = io::stdin();
        let mut buf = [0u8; 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if keys_tx.send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut escape = Escape::default();
    'typing: loop {
        let typed = match keys.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(t) => t,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if !printer.is_finished() => continue,
            Err(_) => break,
        };
        let mut send = Vec::with_capacity(typed.len());
        for &b in &typed {
            match escape.key(b) {
                Key::Send(bytes) => send.extend_from_slice(&bytes),
                Key::Hold => {}
                Key::Leave => {
                    let _ = stream.write_all(&send);
                    break 'typing;
                }
            }
        }
        if stream.write_all(&send).is_err() {
            break;
        }
        if printer.is_finished() {
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let _ = printer.join();
    drop(raw);
    eprintln!("\r\n[banyan: left the console of {node}]");
    Ok(EXIT_OK)
}

/// Reads the response head: its status, its header lines, and any bytes already read past it.
fn read_head(stream: &mut TcpStream) -> Result<(u16, String, Vec<u8>), String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = head.split_off(end + 4);
            let text = String::from_utf8_lossy(&head).into_owned();
            let (first, headers) = text.split_once("\r\n").unwrap_or((&text, ""));
            let status = first
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("not an HTTP answer: {first:?}"))?;
            return Ok((status, headers.to_string(), rest));
        }
        if head.len() > MAX_HEAD {
            return Err("the answer's head is too long".into());
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err("the root closed the connection".into()),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(keys: &[u8]) -> (Vec<u8>, bool) {
        let mut e = Escape::default();
        let mut sent = Vec::new();
        for &b in keys {
            match e.key(b) {
                Key::Send(bytes) => sent.extend(bytes),
                Key::Hold => {}
                Key::Leave => return (sent, true),
            }
        }
        (sent, false)
    }

    #[test]
    fn the_escape_leaves_only_at_the_start_of_a_line() {
        assert_eq!(typed(b"&."), (vec![], true));
        assert_eq!(typed(b"ls\r&."), (b"ls\r".to_vec(), true));
        assert_eq!(typed(b"a&.b"), (b"a&.b".to_vec(), false));
        // A held '&' not followed by '.' is sent with what follows.
        assert_eq!(typed(b"&x\r&&"), (b"&x\r&&".to_vec(), false));
        assert_eq!(typed(b"~."), (b"~.".to_vec(), false));
    }
}
