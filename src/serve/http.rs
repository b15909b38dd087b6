//! The HTTP routes: `POST /v1/completions` (a JSON answer or Server-Sent Events), `GET /health`,
//! `GET /metrics`.

use super::api::{self, ApiError, Header, Limits};
use super::engine::{Engine, Event};
use super::metrics::{Metrics, Outcome};
use super::utf8::Utf8Stream;
use super::Model;
use crate::generate::Generation;
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// What every handler shares.
pub struct AppState {
    pub engine: Engine,
    pub model: Model,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

/// The routes, over `state`. A body larger than any acceptable request is refused with 413
/// before it is read whole.
pub fn router(state: Arc<AppState>) -> Router {
    // A prompt byte takes at most 6 bytes in JSON (`\u00XX`), plus room for the other fields.
    let body_limit = state.limits.max_prompt_bytes.saturating_mul(6) + 64 * 1024;
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

async fn health(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({
        "status": "ok",
        "model": s.model.name,
        "method": s.model.source.method.to_string(),
        "max_streams": s.engine.max_streams(),
    }))
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let arrived = Instant::now();
    match complete(&s, body, arrived).await {
        Ok(r) => r,
        Err(e) => {
            // Streams that reached the engine are counted there.
            if e.status == StatusCode::TOO_MANY_REQUESTS {
                s.metrics.request(Outcome::Busy);
            } else if e.status.is_client_error() {
                s.metrics.request(Outcome::Invalid);
            }
            e.into_response()
        }
    }
}

async fn complete(
    s: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
    arrived: Instant,
) -> Result<Response, ApiError> {
    let body =
        body.map_err(|r| ApiError::new(r.status(), "invalid_request_error", r.body_text()))?;
    let req = api::parse(&body, &s.limits)?;
    let slot = s.engine.reserve().ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "all {} streams are busy; try again shortly",
                s.engine.max_streams()
            ),
        )
    })?;
    // Coding the prompt (through M1 for equal-info) is CPU work: off the async threads, and
    // off the engine's, which keeps stepping the other streams meanwhile.
    let state = s.clone();
    let (prompt, options) = (req.prompt, req.options);
    let prompt_bytes = prompt.len();
    let generation = tokio::task::spawn_blocking(move || {
        let m = &state.model;
        Generation::new(
            &m.source,
            m.m1.clone(),
            state.limits.vocab,
            m.context,
            &prompt,
            &options,
        )
    })
    .await
    .map_err(|e| internal(format!("coding the prompt failed: {e}")))?
    .map_err(|e| ApiError::invalid(format!("{e:#}")))?;
    let events = s
        .engine
        .submit(generation, slot, arrived)
        .map_err(|e| internal(e.to_string()))?;
    let header = Header::new(req.model.unwrap_or_else(|| s.model.name.clone()));
    if req.stream {
        Ok(sse(header, events))
    } else {
        let (text, generated) = collect(events).await?;
        Ok(Json(header.answer(&text, prompt_bytes, generated)).into_response())
    }
}

fn internal(message: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
}

/// The whole text of a stream (lossy UTF-8) and its byte count.
async fn collect(mut events: mpsc::Receiver<Event>) -> Result<(String, usize), ApiError> {
    let mut bytes = Vec::new();
    loop {
        match events.recv().await {
            Some(Event::Text(t)) => bytes.extend_from_slice(&t),
            Some(Event::Done) => {
                return Ok((String::from_utf8_lossy(&bytes).into_owned(), bytes.len()))
            }
            Some(Event::Failed(m)) => return Err(internal(m)),
            None => return Err(internal("the generation engine stopped".into())),
        }
    }
}

/// The stream as Server-Sent Events: a chunk per piece of text, the final chunk with
/// `finish_reason` "length", then `[DONE]`; a failure (or a stream the engine dropped as
/// stalled) is one `{"error":...}` event, and the stream ends there. Text is cut only at whole
/// characters (see [`Utf8Stream`]).
fn sse(header: Header, events: mpsc::Receiver<Event>) -> Response {
    struct Open {
        header: Header,
        events: mpsc::Receiver<Event>,
        text: Utf8Stream,
    }
    let open = Open {
        header,
        events,
        text: Utf8Stream::default(),
    };
    let chunks = futures_util::stream::unfold(Some(open), |open| async move {
        let mut o = open?;
        loop {
            let chunk = match o.events.recv().await {
                Some(Event::Text(t)) => {
                    let text = o.text.push(&t);
                    if text.is_empty() {
                        continue;
                    }
                    return Some((Ok::<_, Infallible>(o.header.chunk(&text, None)), Some(o)));
                }
                Some(Event::Done) => o.header.chunk(&o.text.finish(), Some("length")),
                Some(Event::Failed(m)) => error_event(internal(m)),
                None => error_event(internal(STREAM_DROPPED.into())),
            };
            return Some((Ok(chunk), None));
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// Why a stream's events ended with neither its end nor a failure.
const STREAM_DROPPED: &str = "the stream was dropped: its client took nothing for the stall timeout (--stall-timeout), or the generation engine stopped";

fn error_event(e: ApiError) -> String {
    format!("data: {}\n\n", e.body())
}
