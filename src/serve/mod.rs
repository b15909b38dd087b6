//! `terse serve`: M2 behind an OpenAI-style HTTP API, many requests sharing one copy of the
//! model. A dedicated engine thread advances every stream together, a token each per step
//! (continuous batching: requests join and leave between steps); tokio and axum answer HTTP and
//! relay each stream's text as its units decode.
//!
//! Guarantees: a request gets exactly the `max_tokens` bytes it asked for, or a JSON error; no
//! request data can stop the server (requests are checked before they reach the engine, and a
//! panic inside generation ends only the streams it touched); a client that goes away frees its
//! stream's place at the engine's next step, and one that takes nothing for `stall_timeout` is
//! treated as gone. Refuses (4xx) what [`api::parse`] refuses, and new streams beyond
//! `max_streams` (429).

mod api;
mod engine;
mod http;
mod metrics;
mod utf8;

use crate::generate::{Decoder, Generation, SampleOptions};
use crate::m1::Int8M1;
use crate::tokenize::TokenSource;
use anyhow::{ensure, Context, Result};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The M2 being served, apart from its weights: what its tokens mean.
pub struct Model {
    /// Reported in answers when a request names no model.
    pub name: String,
    pub source: TokenSource,
    /// The M1 equal-info tokens decode through.
    pub m1: Option<Arc<Int8M1>>,
    /// The context M2 trained at (tokens per row).
    pub context: usize,
}

/// How the server listens and what it accepts.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    pub addr: SocketAddr,
    /// Streams generating at once; one more is refused with 429.
    pub max_streams: usize,
    pub max_prompt_bytes: usize,
    /// The largest `max_tokens` (bytes) a request may ask for.
    pub max_output_bytes: usize,
    /// A streaming client that takes nothing for this long is treated as gone: its stream is
    /// dropped and its place freed.
    pub stall_timeout: Duration,
}

impl ServeOptions {
    /// Refuses limits of 0 and a stall timeout of 0, naming the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.max_streams > 0, "--max-streams must be at least 1");
        ensure!(
            self.max_prompt_bytes > 0,
            "--max-prompt-bytes must be at least 1"
        );
        ensure!(
            self.max_output_bytes > 0,
            "--max-output-bytes must be at least 1"
        );
        ensure!(
            !self.stall_timeout.is_zero(),
            "--stall-timeout must be at least 1 second (0 would drop every stream whose client falls behind at all)"
        );
        Ok(())
    }
}

/// Serves `decoder` (M2, as `model` describes it) until SIGINT or SIGTERM. Prints the bound
/// address on stderr once listening (so port 0 works). Refuses what
/// [`ServeOptions::validate`] refuses, an address it cannot bind, and a model that
/// cannot generate (a method that does not stream, a missing M1, a vocabulary other than its
/// data's) before binding.
pub fn serve<D: Decoder + Send + 'static>(
    decoder: D,
    model: Model,
    o: &ServeOptions,
) -> Result<()> {
    o.validate()?;
    let vocab = decoder.config().vocab;
    // Whatever would refuse every request is refused now, once.
    let probe = SampleOptions {
        max_bytes: 1,
        temperature: 1.0,
        top_k: 0,
        seed: 0,
    };
    Generation::new(
        &model.source,
        model.m1.clone(),
        vocab,
        model.context,
        b"",
        &probe,
    )?;
    let metrics = Arc::new(metrics::Metrics::default());
    let state = Arc::new(http::AppState {
        engine: engine::Engine::start(decoder, o.max_streams, o.stall_timeout, metrics.clone())?,
        limits: api::Limits {
            max_prompt_bytes: o.max_prompt_bytes,
            max_output_bytes: o.max_output_bytes,
            vocab,
        },
        model,
        metrics,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(o.addr)
            .await
            .with_context(|| format!("binding {}", o.addr))?;
        let bound = listener.local_addr()?;
        eprintln!(
            "terse serve: listening on http://{bound} ({}, {} streams at most)",
            state.model.name, o.max_streams
        );
        // At the signal, stop accepting and let open requests finish, for a while.
        let (signalled, on_signal) = tokio::sync::oneshot::channel();
        let serving = axum::serve(listener, http::router(state)).with_graceful_shutdown(async {
            shutdown().await;
            let _ = signalled.send(());
        });
        tokio::select! {
            r = serving => r.context("serving HTTP"),
            _ = async {
                match on_signal.await {
                    Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                    Err(_) => std::future::pending().await,
                }
            } => Ok(()),
        }
    })?;
    runtime.shutdown_background();
    eprintln!("terse serve: stopped");
    Ok(())
}

/// How long open requests may run on after SIGINT or SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Resolves at SIGINT or SIGTERM.
async fn shutdown() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
