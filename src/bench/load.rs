//! `terse bench serve`: a load generator for `terse serve`. N clients, each on its own thread
//! and its own connection per request, stream completions over real sockets for a bounded time
//! and time what a user sees: the first text after sending the request, and the gaps between
//! text chunks. Every stream is checked whole (HTTP 200, chunked body complete, a final chunk
//! with a finish reason, then `[DONE]`); anything else counts as a failed stream, with the
//! reason kept.
//!
//! It speaks HTTP/1.1 by hand (a request, the status line, headers, a chunked or close-delimited
//! body) so that it depends on nothing of the server's code or crates: a second implementation of
//! the protocol, as a real client is.

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What [`run_load`] does.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The server, `host:port`.
    pub addr: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Clients start new requests until this much time has passed (requests under way finish).
    pub seconds: f64,
    /// Bytes each completion asks for (`max_tokens`).
    pub max_tokens: usize,
    pub prompt: String,
    pub temperature: f32,
}

/// The 50th and 99th percentiles of a set of times, milliseconds (nearest rank).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub count: usize,
}

impl Percentiles {
    fn of(mut v: Vec<f64>) -> Self {
        if v.is_empty() {
            return Percentiles::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
            count: v.len(),
        }
    }
}

/// What [`run_load`] measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    pub clients: usize,
    /// Wall time from the first request to the last stream's end.
    pub seconds: f64,
    pub streams_completed: usize,
    pub streams_failed: usize,
    /// Up to 10 failure reasons, as seen.
    pub failures: Vec<String>,
    /// Text bytes received in completed streams.
    pub bytes: usize,
    pub bytes_per_s: f64,
    /// Request sent to the first text received, per stream.
    pub ttfb_ms: Percentiles,
    /// Between consecutive text chunks of a stream.
    pub gap_ms: Percentiles,
}

/// One stream's timings.
struct StreamTimes {
    ttfb_ms: f64,
    gaps_ms: Vec<f64>,
    bytes: usize,
}

/// Runs `o.clients` clients against the server for `o.seconds`; refuses zero clients or a
/// server that cannot be reached at the start.
pub fn run_load(o: &LoadOptions) -> Result<LoadReport> {
    ensure!(o.clients > 0, "--clients must be positive");
    TcpStream::connect(&o.addr)
        .with_context(|| format!("cannot reach the server at {}", o.addr))?;
    let body = serde_json::json!({
        "prompt": o.prompt, "max_tokens": o.max_tokens, "temperature": o.temperature, "stream": true
    })
    .to_string();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(o.seconds);
    let results: Vec<Vec<Result<StreamTimes, String>>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..o.clients)
            .map(|_| {
                s.spawn(|| {
                    let mut done = Vec::new();
                    while Instant::now() < deadline {
                        done.push(one_stream(&o.addr, &body).map_err(|e| format!("{e:#}")));
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a load client panicked"))
            .collect()
    });
    let seconds = start.elapsed().as_secs_f64();
    let (mut ttfb, mut gaps, mut bytes, mut failures, mut failed) = (vec![], vec![], 0, vec![], 0);
    let mut completed = 0;
    for r in results.into_iter().flatten() {
        match r {
            Ok(t) => {
                completed += 1;
                ttfb.push(t.ttfb_ms);
                gaps.extend(t.gaps_ms);
                bytes += t.bytes;
            }
            Err(e) => {
                failed += 1;
                if failures.len() < 10 {
                    failures.push(e);
                }
            }
        }
    }
    Ok(LoadReport {
        clients: o.clients,
        seconds,
        streams_completed: completed,
        streams_failed: failed,
        failures,
        bytes,
        bytes_per_s: bytes as f64 / seconds,
        ttfb_ms: Percentiles::of(ttfb),
        gap_ms: Percentiles::of(gaps),
    })
}

/// One streamed completion, checked whole.
fn one_stream(addr: &str, body: &str) -> Result<StreamTimes> {
    let mut conn = TcpStream::connect(addr)?;
    conn.set_read_timeout(Some(Duration::from_secs(120)))?;
    let sent = Instant::now();
    write!(
        conn,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: text/event-stream\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut chunked = false;
    loop {
        line.clear();
        ensure!(
            r.read_line(&mut line)? > 0,
            "connection closed in the headers"
        );
        let h = line.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
            {
                chunked = true;
            }
        }
    }
    if status != "200" {
        let mut rest = String::new();
        let _ = r.read_to_string(&mut rest);
        bail!("HTTP {status}: {}", rest.trim());
    }
    let mut body = Body {
        r,
        chunked,
        left: 0,
        ended: false,
    };
    let mut events = SseEvents::default();
    let (mut ttfb, mut gaps, mut bytes) = (None, Vec::new(), 0);
    let mut last: Option<Instant> = None;
    let (mut finished, mut done) = (false, false);
    let mut buf = [0u8; 4096];
    while !done {
        let n = body.read(&mut buf)?;
        ensure!(n > 0, "stream ended before [DONE] ({bytes} bytes received)");
        for data in events.push(&buf[..n]) {
            ensure!(!finished || data == "[DONE]", "data after the final chunk");
            if data == "[DONE]" {
                ensure!(finished, "[DONE] without a final chunk");
                done = true;
                break;
            }
            let v: serde_json::Value =
                serde_json::from_str(&data).with_context(|| format!("bad event: {data}"))?;
            if let Some(e) = v.get("error") {
                bail!("error event: {e}");
            }
            let choice = &v["choices"][0];
            let text = choice["text"].as_str().context("a chunk without text")?;
            if !text.is_empty() {
                let now = Instant::now();
                ttfb.get_or_insert(now - sent);
                if let Some(l) = last {
                    gaps.push(1e3 * (now - l).as_secs_f64());
                }
                last = Some(now);
                bytes += text.len();
            }
            finished = !choice["finish_reason"].is_null();
        }
    }
    Ok(StreamTimes {
        ttfb_ms: 1e3 * ttfb.context("a stream without text")?.as_secs_f64(),
        gaps_ms: gaps,
        bytes,
    })
}

/// A response body, chunked or delimited by the connection's close.
struct Body<R> {
    r: R,
    chunked: bool,
    /// Bytes left in the current chunk.
    left: usize,
    ended: bool,
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if !self.chunked {
            return self.r.read(out);
        }
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        if self.ended {
            return Ok(0);
        }
        if self.left == 0 {
            let mut size = String::new();
            if self.r.read_line(&mut size)? == 0 {
                return Err(bad("connection closed inside a chunked body"));
            }
            let hex = size.trim().split(';').next().unwrap_or("");
            self.left = usize::from_str_radix(hex, 16).map_err(|_| bad("bad chunk size"))?;
            if self.left == 0 {
                self.ended = true;
                return Ok(0);
            }
        }
        let want = self.left.min(out.len());
        let n = self.r.read(&mut out[..want])?;
        if n == 0 {
            return Err(bad("connection closed inside a chunk"));
        }
        self.left -= n;
        if self.left == 0 {
            let mut crlf = [0u8; 2];
            self.r.read_exact(&mut crlf)?;
        }
        Ok(n)
    }
}

/// Splits a byte stream into Server-Sent Events' `data:` payloads (events end at a blank line).
#[derive(Default)]
struct SseEvents {
    pending: Vec<u8>,
}

impl SseEvents {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(end) = self.pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.pending.drain(..end + 2).collect();
            let data: Vec<&str> = std::str::from_utf8(&event)
                .unwrap_or("")
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                out.push(data.join("\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let p = Percentiles::of((1..=100).map(f64::from).rev().collect());
        assert_eq!((p.p50, p.p99, p.count), (50.0, 99.0, 100));
        let one = Percentiles::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
    }

    /// Events split anywhere across reads come out whole; comments and other fields are skipped.
    #[test]
    fn sse_events_survive_any_split() {
        let stream =
            b": hi\n\ndata: {\"a\":1}\n\nevent: x\ndata: two\ndata: lines\n\ndata: [DONE]\n\n";
        for cut in 1..stream.len() {
            let mut e = SseEvents::default();
            let mut got = e.push(&stream[..cut]);
            got.extend(e.push(&stream[cut..]));
            assert_eq!(got, ["{\"a\":1}", "two\nlines", "[DONE]"], "cut at {cut}");
        }
    }

    #[test]
    fn chunked_bodies_decode_and_truncation_is_an_error() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n";
        let mut b = Body {
            r: &wire[..],
            chunked: true,
            left: 0,
            ended: false,
        };
        let mut s = String::new();
        b.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello, world");
        let mut cut = Body {
            r: &wire[..9],
            chunked: true,
            left: 0,
            ended: false,
        };
        assert!(cut.read_to_string(&mut String::new()).is_err());
    }
}
