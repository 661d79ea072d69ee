//! Bad input to every route of the root's HTTP API: unknown and hostile job names, broken node
//! sets, huge query strings and bodies, wrong methods, missing or wrong tokens on writes. Each
//! gets a JSON `{"error", "detail"}` with a 4xx status, and the root keeps serving the tree.

use anyhow::{anyhow, Context, Result};
use banyan_tests::cluster::{Cluster, ClusterOptions};
use banyan_tests::support::http_request;
use banyan_tests::support::url_encode;
use banyan_tests::testnet::Testnet;
use serde_json::{json, Value};
use std::time::Duration;

const FORM: Duration = Duration::from_secs(45);
const TIMEOUT: Duration = Duration::from_secs(20);

/// Sends one request and checks that the answer is the JSON error `want` promises.
fn expect_error(
    c: &Cluster,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
    want: u16,
) -> Result<Value> {
    let (status, bytes) = http_request(c.http_addr(), method, path, token, body, TIMEOUT)
        .with_context(|| format!("{method} {}", short(path)))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| {
        anyhow!(
            "{method} {}: status {status}, not a JSON error ({e}): {}",
            short(path),
            String::from_utf8_lossy(&bytes[..bytes.len().min(300)])
        )
    })?;
    anyhow::ensure!(
        status == want,
        "{method} {}: status {status}, wanted {want}: {json}",
        short(path)
    );
    anyhow::ensure!(
        json["error"].is_string() && json["detail"].is_string(),
        "{method} {}: not {{error, detail}}: {json}",
        short(path)
    );
    Ok(json)
}

/// Sends only the head of a POST that declares `len` bytes and expects to be asked for them with
/// `100 Continue`; returns the status and body of the final answer, which must come first.
fn post_declaring(
    addr: std::net::SocketAddr,
    path: &str,
    token: &str,
    len: usize,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {len}\r\n\
         Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to POST {path}"))?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("no HTTP status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn short(path: &str) -> String {
    if path.len() > 80 {
        format!("{}... ({} bytes)", &path[..80], path.len())
    } else {
        path.to_string()
    }
}

/// A GET written on a plain socket, for requests no HTTP client will send: `(status, body)`.
fn raw_get(c: &Cluster, target: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(c.http_addr())?;
    s.set_read_timeout(Some(TIMEOUT))?;
    // The server may refuse before reading it all; a write error is an answer too.
    let _ = s.write_all(
        format!("GET {target} HTTP/1.1\r\nHost: banyan\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {:?}", &text[..text.len().min(200)]))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

#[test]
fn every_route_answers_bad_input_with_a_json_error_and_keeps_serving() -> Result<()> {
    if !Testnet::require()? {
        return Ok(());
    }
    let mut cluster = Cluster::start(2, ClusterOptions::default())?;
    let result = (|| -> Result<()> {
        let c = &cluster;
        let names = c.names();
        c.wait_healthy(&names, FORM)?;
        let token = c.admin_token().to_string();

        // Unknown and hostile job names, on every route that takes one.
        let hostile = [
            "nope",
            "<script>alert(1)</script>",
            "../../../etc/passwd",
            "/etc/passwd",
            "\"quoted\" & 'single'",
            "Node: ",
            "Node: nosuchnode",
            "Node: ../x",
            "main\n",
            "\u{202e}evil\u{0}",
        ];
        for id in hostile {
            for route in ["/job", "/job/", "/metrics", "/metrics/"] {
                let path = format!("{route}?job={}", url_encode(id));
                let err = expect_error(c, "GET", &path, None, None, 404)?;
                // The name comes back only as JSON string content, never as markup or a path.
                assert!(err["detail"].as_str().is_some(), "{err}");
            }
        }
        // Query strings too large for any real use (sent raw: HTTP clients refuse to). Up to
        // hyper's URI limit (64 kB) the route answers with its JSON error; past it hyper refuses
        // the request line itself with a bare 414, before any route sees it.
        let (status, body) = raw_get(c, &format!("/job?job={}", "x".repeat(60_000)))?;
        assert_eq!(
            status,
            404,
            "a 60 kB job name: {}",
            body.chars().take(200).collect::<String>()
        );
        let json: Value = serde_json::from_str(&body).context("a 60 kB job name: JSON error")?;
        assert!(json["error"].is_string(), "{json}");
        for size in [100_000, 2 << 20] {
            let (status, _) = raw_get(c, &format!("/job?job={}", "x".repeat(size)))?;
            assert!(
                (400..500).contains(&status),
                "a {size}-byte request line: status {status}"
            );
        }
        // A broken escape is kept literally (as browsers do), so it is just an unknown job.
        expect_error(c, "GET", "/job?job=%ZZ", None, None, 404)?;
        expect_error(c, "GET", "/job?job=a&job=b", None, None, 400)?;

        // Node sets that do not parse or would expand past any cluster.
        for bad in [
            "cn[",
            "cn[5-1]",
            "cn[1-99999999999]",
            "@/etc/passwd",
            "cn[1-2",
        ] {
            let path = format!("/nodes?nodes={}", url_encode(bad));
            expect_error(c, "GET", &path, None, None, 400)?;
        }

        // Wrong methods.
        for (method, path) in [
            ("POST", "/job/list"),
            ("DELETE", "/nodes"),
            ("GET", "/ping"),
            ("PUT", "/metrics"),
            ("POST", "/topology"),
            ("PATCH", "/status"),
        ] {
            expect_error(c, method, path, Some(&token), Some(&json!({})), 405)?;
        }
        // Unknown routes, including ones that look like paths.
        for path in [
            "/nope",
            "/../../etc/passwd",
            "/job/list/extra",
            "/%2e%2e/state",
        ] {
            expect_error(c, "GET", path, None, None, 404)?;
        }

        // Writes without the token, with a wrong one, and with bodies that are not what they take.
        let ping = json!({"nodes": names[0]});
        expect_error(c, "POST", "/ping", None, Some(&ping), 401)?;
        expect_error(c, "POST", "/ping", Some("wrong"), Some(&ping), 403)?;
        expect_error(c, "GET", "/join?to=cn1:9100", None, None, 401)?;
        expect_error(c, "GET", "/join/del?to=cn1:9100", Some("wrong"), None, 403)?;
        expect_error(
            c,
            "POST",
            "/ping",
            Some(&token),
            Some(&json!({"nodes": 5})),
            400,
        )?;
        expect_error(c, "POST", "/ping", Some(&token), Some(&json!([1, 2])), 400)?;
        // A 4 MiB upload is refused from its declared length, before the body is read: the client
        // asked with `Expect: 100-continue`, so it never has to send it (and never races the answer).
        let (status, answer) = post_declaring(c.http_addr(), "/ping", &token, 4 << 20)?;
        assert_eq!(status, 413, "a declared 4 MiB body is refused: {answer}");
        let answer: Value = serde_json::from_str(&answer)
            .map_err(|e| anyhow!("the 413 is not a JSON error ({e}): {answer}"))?;
        assert!(answer["error"].is_string(), "{answer}");
        expect_error(
            c,
            "POST",
            "/ping",
            Some(&token),
            Some(&json!({"nodes": "cn[1-99999999999]"})),
            400,
        )?;

        // The root still serves everyone: reads, a write, and the tree.
        let status = c.http_get("/status")?;
        assert_eq!(status["nodes_up"], names.len(), "{status}");
        let pong = c.ping(&names.join(","))?;
        let answered = pong["answered"]
            .as_object()
            .ok_or_else(|| anyhow!("ping: {pong}"))?;
        assert_eq!(answered.len(), names.len(), "{pong}");
        c.wait_healthy(&names, FORM)?;
        Ok(())
    })();
    if result.is_err() {
        cluster.keep_logs();
    }
    result.with_context(|| format!("cluster logs in {}", cluster.dir().display()))
}
