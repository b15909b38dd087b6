//! The OpenAI completions protocol: what a request may hold, what is refused and how, and the
//! JSON of answers and stream chunks.

use crate::generate::SampleOptions;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The sizes a request may ask for.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_prompt_bytes: usize,
    pub max_output_bytes: usize,
    /// The model's vocabulary, which bounds `top_k`.
    pub vocab: usize,
}

/// A refusal or failure as the client sees it: a status and
/// `{"error":{"message":...,"type":...}}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            kind,
            message: message.into(),
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// `POST /v1/completions`' body. Any field not named here is refused, so a client asking for
/// something this server does not do (`n`, `stop`, `logprobs`, ...) hears so instead of
/// silently getting something else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    prompt: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stream: Option<bool>,
    model: Option<String>,
}

/// A completion request, checked.
#[derive(Debug)]
pub struct Completion {
    pub prompt: Vec<u8>,
    pub options: SampleOptions,
    pub stream: bool,
    pub model: Option<String>,
}

/// `max_tokens` when left out, as OpenAI's API.
const DEFAULT_MAX_TOKENS: usize = 16;

/// Parses and checks a request body. Refuses, with 400: a body that is not UTF-8, not JSON or
/// not an object of the fields above with their types, `max_tokens` 0 or above the limit, a bad
/// temperature or top_k; with 413, a prompt above the limit.
pub fn parse(body: &[u8], limits: &Limits) -> Result<Completion, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::invalid(format!("the request body is not UTF-8: {e}")))?;
    let b: Body = serde_json::from_str(text)
        .map_err(|e| ApiError::invalid(format!("the request body is not a valid request: {e}")))?;
    let prompt = b.prompt.unwrap_or_default().into_bytes();
    if prompt.len() > limits.max_prompt_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!(
                "the prompt is {} bytes; this server takes at most {} (--max-prompt-bytes)",
                prompt.len(),
                limits.max_prompt_bytes
            ),
        ));
    }
    let max_bytes = b.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
    if max_bytes == 0 || max_bytes > limits.max_output_bytes {
        return Err(ApiError::invalid(format!(
            "max_tokens (bytes to generate) must be 1 to {} (--max-output-bytes), not {max_bytes}",
            limits.max_output_bytes
        )));
    }
    let options = SampleOptions {
        max_bytes,
        temperature: b.temperature.unwrap_or(1.0),
        top_k: b.top_k.unwrap_or(0),
        seed: b.seed.unwrap_or_else(fresh_seed),
    };
    // The checks are `terse generate`'s, whose messages name its flags; here they are fields.
    options.validate(Some(limits.vocab)).map_err(|e| {
        ApiError::invalid(
            e.to_string()
                .replace("--temperature", "temperature")
                .replace("--top-k", "top_k"),
        )
    })?;
    Ok(Completion {
        prompt,
        options,
        stream: b.stream.unwrap_or(false),
        model: b.model,
    })
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A seed for a request that gave none: different for every request.
fn fresh_seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ COUNTER
        .fetch_add(1, Ordering::Relaxed)
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The fields every answer and chunk of one completion share.
pub struct Header {
    id: String,
    created: u64,
    model: String,
}

impl Header {
    pub fn new(model: String) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Header {
            id: format!("cmpl-{created:x}{n:x}"),
            created,
            model,
        }
    }

    fn object(&self, text: &str, finish: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}],
        })
    }

    /// One Server-Sent Event of a streamed completion; the last (`finish` "length") is followed
    /// by `data: [DONE]`.
    pub fn chunk(&self, text: &str, finish: Option<&str>) -> String {
        let mut s = format!("data: {}\n\n", self.object(text, finish));
        if finish.is_some() {
            s += "data: [DONE]\n\n";
        }
        s
    }

    /// The whole answer of a completion that did not stream. `usage` counts bytes: the
    /// prompt's and the generated ones.
    pub fn answer(&self, text: &str, prompt_bytes: usize, generated: usize) -> Value {
        let mut v = self.object(text, Some("length"));
        v["usage"] = json!({
            "prompt_tokens": prompt_bytes,
            "completion_tokens": generated,
            "total_tokens": prompt_bytes + generated,
        });
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_prompt_bytes: 8,
        max_output_bytes: 100,
        vocab: 256,
    };

    fn refused(body: &[u8]) -> ApiError {
        parse(body, &LIMITS).unwrap_err()
    }

    #[test]
    fn refusals_name_their_reason() {
        let e = refused(b"{\"prompt\": \"a\", \"n\": 2}");
        assert_eq!(e.status, 400);
        assert!(e.message.contains("unknown field `n`"), "{}", e.message);
        assert!(refused(b"{\"prompt\": 3}").message.contains("invalid type"));
        assert!(refused(b"{\"prompt\": \"\xff\"}")
            .message
            .contains("not UTF-8"));
        assert!(refused(b"{\"prompt\"")
            .message
            .contains("not a valid request"));
        assert_eq!(refused(b"{\"prompt\": \"123456789\"}").status, 413);
        for m in ["0", "101"] {
            let body = format!("{{\"max_tokens\": {m}}}");
            assert!(refused(body.as_bytes()).message.contains("max_tokens"));
        }
        let e = refused(b"{\"temperature\": -1}");
        assert!(
            e.message.starts_with("temperature must be"),
            "{}",
            e.message
        );
        let e = refused(b"{\"top_k\": 257}");
        assert!(e.message.starts_with("top_k 257"), "{}", e.message);
    }

    #[test]
    fn a_request_takes_defaults_and_its_own_values() {
        let c = parse(
            b"{\"model\": \"m\", \"stream\": true, \"seed\": 5}",
            &LIMITS,
        )
        .unwrap();
        assert!(c.stream && c.prompt.is_empty());
        assert_eq!(c.options.max_bytes, DEFAULT_MAX_TOKENS);
        assert_eq!((c.options.seed, c.options.temperature), (5, 1.0));
        assert_eq!(c.model.as_deref(), Some("m"));
    }
}
