//! `terse serve` end to end: the real binary on a free port, spoken to over real sockets by
//! `curl` and by OpenAI's Python client.

mod common;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A tiny M2 on 8-bit byte tokens, trained for a few steps, built once per test binary (under
/// cargo's temporary directory for tests, as a static is never dropped to remove it).
fn m2() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = common::sample_prefix(&dir, 50_000);
        let ds = dir.join("bytes8");
        common::tokenize(&corpus, &ds, "bytes", "8", "2048", &[]);
        let run = dir.join("m2");
        let (d, o) = (ds.to_str().unwrap(), run.to_str().unwrap());
        let r = common::terse(&[
            "train", "--data", d, "--preset", "tiny", "--steps", "12", "--batch", "4", "--seq",
            "64", "--lr", "3e-3", "--out", o, "--quiet",
        ]);
        assert!(r.status.success(), "{}", common::stderr(&r));
        run
    })
}

/// A running `terse serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let m2 = m2();
        let mut child = Command::new(env!("CARGO_BIN_EXE_terse"))
            .args([
                "serve",
                "--m2",
                m2.to_str().unwrap(),
                "--addr",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("serve exited before listening")
                .unwrap();
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining stderr so the server never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, addr }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `curl` posting `body` to /v1/completions (streaming with -N), waiting for it.
    fn post(&self, body: &[u8]) -> (u16, String) {
        let mut c = self.curl_post(body);
        let mut out = String::new();
        c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(c.wait().unwrap().success(), "curl failed");
        split_status(out)
    }

    /// `curl` posting `body`, running, its stdout piped (the status follows the body).
    fn curl_post(&self, body: &[u8]) -> Child {
        let mut c = Command::new("curl")
            .args(["-sS", "-N", "--max-time", "120", "-X", "POST"])
            .args([
                "-H",
                "content-type: application/json",
                "--data-binary",
                "@-",
            ])
            .args(["-w", "\n%{http_code}", &self.url("/v1/completions")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("curl must be installed");
        c.stdin.take().unwrap().write_all(body).unwrap();
        c
    }

    fn get(&self, path: &str) -> (u16, String) {
        let o = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "30",
                "-w",
                "\n%{http_code}",
                &self.url(path),
            ])
            .output()
            .unwrap();
        split_status(String::from_utf8(o.stdout).unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn split_status(out: String) -> (u16, String) {
    let (body, code) = out.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

/// The `data:` payloads of an SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The text of a streamed completion, checking the chunks' shape: each a `text_completion`
/// chunk, the last with `finish_reason` "length", then `[DONE]`.
fn streamed_text(body: &str) -> (String, usize) {
    let data = sse_data(body);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let mut text = String::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], "text_completion", "{c}");
        let finish = &c["choices"][0]["finish_reason"];
        if i + 1 == chunks.len() {
            assert_eq!(finish, "length", "{c}");
        } else {
            assert!(finish.is_null(), "{c}");
        }
        text += c["choices"][0]["text"].as_str().unwrap();
    }
    (text, chunks.len())
}

fn completion(prompt: &str, max_tokens: usize, seed: u64, stream: bool) -> Vec<u8> {
    serde_json::json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 1.0,
        "top_k": 40, "seed": seed, "stream": stream, "model": "tiny"})
    .to_string()
    .into_bytes()
}

/// Bytes the text stands for: a lossy decode, so each U+FFFD stands for 1 to 3 bytes.
fn check_length(text: &str, bytes: usize) {
    let replaced = text
        .chars()
        .filter(|&c| c == char::REPLACEMENT_CHARACTER)
        .count();
    let plain = text.len() - 3 * replaced;
    assert!(
        plain + replaced <= bytes && bytes <= plain + 3 * replaced,
        "{text:?}"
    );
}

#[test]
fn a_streamed_completion_arrives_in_chunks_and_matches_the_whole_answer() {
    streamed_matches_whole(&[]);
}

#[test]
fn the_exact_m2_serves_the_same_way() {
    streamed_matches_whole(&["--exact"]);
}

#[test]
fn the_m2_with_int8_weights_serves_the_same_way() {
    streamed_matches_whole(&["--weights", "int8"]);
}

/// On the GPU (or the CUDA emulator), where one is usable: the same streams as the CPU's with
/// int8 weights (`streamed_matches_whole` checks the seed's text, streamed and whole, alone and
/// batched).
#[test]
fn the_gpu_m2_serves_the_same_way() {
    if let Some(why) = terse::backend::cuda::gpu_unavailable_reason() {
        eprintln!("SKIPPED (no GPU): the_gpu_m2_serves_the_same_way: {why}");
        return;
    }
    streamed_matches_whole(&["--device", "cuda"]);
    let cpu = Server::start(&["--device", "cpu", "--weights", "int8"]);
    let gpu = Server::start(&["--device", "cuda"]);
    let req = completion("The ", 200, 11, false);
    assert_eq!(cpu.post(&req), gpu.post(&req));
}

fn streamed_matches_whole(flags: &[&str]) {
    let s = Server::start(flags);
    let (status, body) = s.post(&completion("The ", 300, 7, true));
    assert_eq!(status, 200, "{body}");
    let (streamed, chunks) = streamed_text(&body);
    assert!(chunks > 5, "{chunks} chunks");
    let (status, body) = s.post(&completion("The ", 300, 7, false));
    assert_eq!(status, 200, "{body}");
    let whole: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(whole["usage"]["completion_tokens"], 300, "{whole}");
    assert_eq!(whole["usage"]["prompt_tokens"], 4, "{whole}");
    assert_eq!(whole["model"], "tiny");
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    let text = whole["choices"][0]["text"].as_str().unwrap();
    // The same seed gives the same bytes, streamed or not, alone or batched.
    assert_eq!(streamed, text);
    check_length(text, 300);
}

#[test]
fn bad_requests_get_a_4xx_json_error() {
    let s = Server::start(&["--max-prompt-bytes", "100", "--max-output-bytes", "1000"]);
    let big = format!("{{\"prompt\": \"{}\"}}", "x".repeat(101));
    // Past the body limit (6 bytes per prompt byte + 64 KiB), yet small enough for the socket
    // buffers to take whole, so curl finishes sending before the early 413 closes the line.
    let huge_body = format!("{{\"prompt\": \"{}\"}}", "x".repeat(200_000));
    let cases: &[(&[u8], u16, &str)] = &[
        (b"{\"prompt\": \"a\",", 400, "not a valid request"),
        (b"[1, 2]", 400, "not a valid request"),
        (b"{\"prompt\": \"a\", \"n\": 2}", 400, "unknown field `n`"),
        (b"{\"prompt\": 17}", 400, "invalid type"),
        (b"{\"max_tokens\": \"9\"}", 400, "invalid type"),
        (b"{\"prompt\": \"\xff\xfe\"}", 400, "not UTF-8"),
        (big.as_bytes(), 413, "at most 100"),
        (huge_body.as_bytes(), 413, ""),
        (b"{\"max_tokens\": 0}", 400, "max_tokens"),
        (b"{\"max_tokens\": 1001}", 400, "max_tokens"),
        (b"{\"max_tokens\": 100000000000}", 400, "max_tokens"),
        (b"{\"temperature\": -0.5}", 400, "temperature"),
        (b"{\"top_k\": 100000}", 400, "top_k"),
    ];
    for (body, want, says) in cases {
        let (status, answer) = s.post(body);
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]);
        assert_eq!(status, *want, "{shown}: {answer}");
        let e: Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("{answer}"));
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{shown}: {message}");
        assert!(e["error"]["type"].is_string(), "{answer}");
    }
    // The server is still there, and counted every refusal.
    let (status, metrics) = s.get("/metrics");
    assert_eq!(status, 200);
    let line = format!(
        "terse_requests_total{{outcome=\"invalid\"}} {}",
        cases.len()
    );
    assert!(metrics.contains(&line), "{metrics}");
}

#[test]
fn a_client_that_disconnects_frees_its_stream_while_another_completes() {
    let s = Server::start(&["--max-streams", "2", "--max-output-bytes", "100000"]);
    // A: streams, and is killed after its first chunk.
    let mut a = s.curl_post(&completion("A", 100_000, 1, true));
    let mut a_out = BufReader::new(a.stdout.take().unwrap());
    let mut first = String::new();
    a_out.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: {"), "{first}");
    // B: streams alongside, its first chunk read so it holds its place before C asks.
    let mut b = s.curl_post(&completion("B", 20_000, 2, true));
    let mut b_out = BufReader::new(b.stdout.take().unwrap());
    let mut b_first = String::new();
    b_out.read_line(&mut b_first).unwrap();
    let (status, body) = s.post(&completion("C", 5, 3, false));
    assert_eq!(status, 429, "both streams busy: {body}");
    a.kill().unwrap();
    a.wait().unwrap();
    drop(a_out);
    // A's place comes free while B still holds its own.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (status, body) = loop {
        let r = s.post(&completion("D", 5, 4, false));
        if r.0 != 429 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = s.get("/metrics");
    assert!(
        metrics.contains("terse_requests_total{outcome=\"cancelled\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("terse_active_streams 1\n"), "{metrics}");
    // B completes, whole.
    let mut out = b_first;
    b_out.read_to_string(&mut out).unwrap();
    assert!(b.wait().unwrap().success());
    let (status, body) = split_status(out);
    assert_eq!(status, 200);
    let (streamed, _) = streamed_text(&body);
    // Batched with A, C and D or alone, a seed gives the same bytes.
    let (_, whole) = s.post(&completion("B", 20_000, 2, false));
    let whole: Value = serde_json::from_str(&whole).unwrap();
    assert_eq!(streamed, whole["choices"][0]["text"].as_str().unwrap());
    check_length(&streamed, 20_000);
}

/// A client that stops reading a stream without closing its socket holds its place until
/// `--stall-timeout`, then is dropped: the place comes free while the socket is still open,
/// `/metrics` counts it as cancelled, and the client, reading again, is told why.
#[test]
fn a_client_that_stops_reading_is_dropped_after_the_stall_timeout() {
    let s = Server::start(&[
        "--max-streams",
        "1",
        "--stall-timeout",
        "2",
        "--max-output-bytes",
        "10000000",
    ]);
    let opened = Instant::now();
    // Far more than the socket buffers hold (each generated byte is a ~150-byte chunk here),
    // and far more than the model makes in this test's time: A can only end by being dropped.
    let body = completion("A", 10_000_000, 1, true);
    let mut a = TcpStream::connect(&s.addr).unwrap();
    write!(
        a,
        "POST /v1/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n",
        s.addr,
        body.len()
    )
    .unwrap();
    a.write_all(&body).unwrap();
    // The headers and the first chunk, so A holds its place; then A reads nothing.
    let mut got = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&got).contains("data: {") {
        let n = a.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    let (status, body) = s.post(&completion("B", 5, 2, false));
    assert_eq!(status, 429, "A holds the only place: {body}");
    // A's queue fills, and 2 s later its place comes free, its socket still open.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (status, body) = loop {
        let r = s.post(&completion("C", 5, 3, false));
        if r.0 != 429 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status, 200, "{body}");
    assert!(opened.elapsed() > Duration::from_secs(2));
    let (_, metrics) = s.get("/metrics");
    for want in [
        "terse_requests_total{outcome=\"cancelled\"} 1\n",
        "terse_requests_total{outcome=\"ok\"} 1\n",
        "terse_active_streams 0\n",
    ] {
        assert!(metrics.contains(want), "{want} missing from\n{metrics}");
    }
    // Reading again, A gets what was queued for it and then the reason, and the line closes.
    a.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    a.read_to_end(&mut got).unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(!got.contains("[DONE]"));
    assert!(
        got.contains("its client took nothing for the stall timeout"),
        "{}",
        &got[got.len().saturating_sub(500)..]
    );
}

#[test]
fn health_and_metrics_answer_and_sigterm_stops_it() {
    let s = Server::start(&[]);
    let (status, body) = s.get("/health");
    assert_eq!(status, 200);
    let h: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["method"], "bytes");
    assert_eq!(s.post(&completion("x", 20, 1, false)).0, 200);
    let (status, m) = s.get("/metrics");
    assert_eq!(status, 200);
    for want in [
        "terse_requests_total{outcome=\"ok\"} 1\n",
        "terse_generated_bytes_total 20\n",
        "terse_time_to_first_byte_seconds_count 1\n",
        "# TYPE terse_engine_step_seconds histogram\n",
        "terse_active_streams 0\n",
    ] {
        assert!(m.contains(want), "{want} missing from\n{m}");
    }
    // SIGTERM stops it cleanly.
    let mut s = s;
    let pid = s.child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop at SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
}

/// `terse bench serve`'s own HTTP/1.1 client streams from the real server: every stream
/// completes, its counts agree with the server's metrics, and a server that is not there is one
/// clear error.
#[test]
fn bench_serve_loads_the_server_with_no_failed_stream() {
    // As many clients as streams: a client sends its next request as soon as it reads `[DONE]`,
    // so the server must have let go of the stream's place before sending it.
    let s = Server::start(&["--max-streams", "4"]);
    let out = common::terse(&[
        "bench",
        "serve",
        "--addr",
        &s.addr,
        "--clients",
        "4",
        "--seconds",
        "2",
        "--max-tokens",
        "40",
        "--json",
    ]);
    assert!(out.status.success(), "{}", common::stderr(&out));
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let r = &j["report"];
    let completed = r["streams_completed"].as_u64().unwrap();
    assert!(completed >= 4, "{r}");
    assert_eq!(r["streams_failed"], 0, "{r}");
    assert!(r["ttfb_ms"]["p50"].as_f64().unwrap() > 0.0, "{r}");
    assert!(r["gap_ms"]["count"].as_u64().unwrap() > 0, "{r}");
    // The server may count a stream's end just after its client has read `[DONE]`.
    let want = format!("terse_requests_total{{outcome=\"ok\"}} {completed}\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, m) = s.get("/metrics");
        if m.contains(&want) {
            break;
        }
        assert!(Instant::now() < deadline, "{completed} streams\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    drop(s);
    let gone = common::terse(&[
        "bench",
        "serve",
        "--addr",
        &format!("127.0.0.1:{port}"),
        "--seconds",
        "1",
    ]);
    assert!(!gone.status.success());
    assert!(
        common::stderr(&gone).contains("cannot reach the server"),
        "{}",
        common::stderr(&gone)
    );
}

#[test]
fn openai_python_client_streams_a_completion() {
    let has_openai = Command::new("python3")
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_openai {
        eprintln!("skipped: python3 with the openai package is not installed (pip install openai)");
        return;
    }
    let s = Server::start(&[]);
    let script = r#"
import sys, openai
c = openai.OpenAI(base_url=sys.argv[1], api_key="x")
parts = [ch.choices[0].text for ch in c.completions.create(
    model="tiny", prompt="The ", max_tokens=200, temperature=0.8, seed=5, stream=True)]
whole = c.completions.create(model="tiny", prompt="The ", max_tokens=200, temperature=0.8, seed=5)
assert "".join(parts) == whole.choices[0].text, (parts, whole)
assert whole.usage.completion_tokens == 200, whole.usage
try:
    c.completions.create(model="tiny", prompt="x", max_tokens=0)
    sys.exit("max_tokens 0 was accepted")
except openai.BadRequestError as e:
    assert "max_tokens" in str(e), e
print(len(parts))
"#;
    let o = Command::new("python3")
        .args(["-c", script, &s.url("/v1")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.trim().parse::<usize>().unwrap() > 5, "{stdout}");
}

#[test]
fn bad_flags_and_a_taken_address_are_refused() {
    let r = common::terse(&["serve", "--m2", "nowhere", "--max-streams", "0"]);
    assert!(!r.status.success());
    assert!(common::stderr(&r).contains("--max-streams must be at least 1"));
    let model = m2().to_str().unwrap();
    let r = common::terse(&["serve", "--m2", model, "--device", "cuda", "--exact"]);
    assert!(!r.status.success());
    assert!(common::stderr(&r).contains("--exact runs M2 in f32 on the CPU only"));
    let r = common::terse(&[
        "serve",
        "--m2",
        model,
        "--device",
        "cuda",
        "--weights",
        "int4",
    ]);
    assert!(!r.status.success());
    assert!(common::stderr(&r).contains("--weights int4 runs M2 on the CPU only"));
    if terse::backend::cuda::gpu_unavailable_reason().is_some() {
        let r = common::terse(&["serve", "--m2", model, "--device", "cuda"]);
        assert!(!r.status.success());
        assert!(common::stderr(&r).contains("--device cuda: no usable GPU"));
    }
    let r = common::terse(&["serve", "--m2", "nowhere", "--stall-timeout", "0"]);
    assert!(!r.status.success());
    assert!(common::stderr(&r).contains("--stall-timeout must be at least 1 second"));
    let s = Server::start(&[]);
    let r = common::terse(&["serve", "--m2", m2().to_str().unwrap(), "--addr", &s.addr]);
    assert!(!r.status.success());
    assert!(
        common::stderr(&r).contains(&format!("binding {}", s.addr)),
        "{}",
        common::stderr(&r)
    );
}
