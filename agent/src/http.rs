//! The read-only HTTP endpoint: /metrics, /findings, /tree, /healthz.
//!
//! GET (and HEAD) only; no control surface. Connections are bounded in
//! number and in time: a client that trickles its request headers (or its
//! TLS handshake) is cut off after a few seconds and cannot hold the slots
//! scrapes need. TLS and basic authentication come from `--web.config.file`
//! (see `webconfig`).

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Semaphore};
use tracing::{debug, warn};

use crate::{
    clock, metrics::Metrics, model::Model, output, targets::Selection, webconfig::BasicAuth,
};

/// Most connections served at once; the rest wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;
/// Time a client gets to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection may stay open.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What the handlers read.
pub struct Shared {
    pub model: Mutex<Model>,
    pub metrics: Metrics,
    /// Resolved metric handles for the per-event path.
    pub handles: crate::metrics::Handles,
    pub selection: Selection,
    /// Monotonic ns of the event loop's last turn (for /healthz).
    pub heartbeat_ns: AtomicU64,
    /// Refreshes gauges just before a scrape.
    pub before_scrape: Box<dyn Fn(&Shared) + Send + Sync>,
}

pub fn router(shared: Arc<Shared>, auth: Option<Arc<BasicAuth>>) -> Router {
    let router = Router::new()
        .route("/", get(index))
        .route("/metrics", get(metrics))
        .route("/findings", get(findings))
        .route("/tree", get(tree))
        .route("/healthz", get(healthz))
        .with_state(shared);
    match auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, require_auth)),
        None => router,
    }
}

/// Basic authentication on every path.
async fn require_auth(
    State(auth): State<Arc<BasicAuth>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    // bcrypt is slow by design: off the async workers.
    let ok = tokio::task::spawn_blocking(move || auth.check(header.as_deref()))
        .await
        .unwrap_or(false);
    if ok {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"forkwatch\"")],
            "unauthorized\n",
        )
            .into_response()
    }
}

async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><head><title>forkwatch</title></head><body><h1>forkwatch</h1><ul>\
         <li><a href=\"/metrics\">/metrics</a></li><li><a href=\"/findings\">/findings</a></li>\
         <li><a href=\"/tree\">/tree</a></li><li><a href=\"/healthz\">/healthz</a></li></ul></body></html>",
    )
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (s.before_scrape)(&s);
    let body = s.metrics.render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn findings(State(s): State<Arc<Shared>>) -> Response {
    let model = s.model.lock().expect("model lock");
    json(&output::findings_doc(
        &model,
        &s.selection,
        clock::monotonic_ns(),
    ))
}

async fn tree(State(s): State<Arc<Shared>>) -> Response {
    let model = s.model.lock().expect("model lock");
    json(&serde_json::json!({ "servers": output::tree(&model, &s.selection) }))
}

/// Healthy while the event loop turns (it wakes at least every second).
async fn healthz(State(s): State<Arc<Shared>>) -> Response {
    let age = clock::monotonic_ns().saturating_sub(s.heartbeat_ns.load(Ordering::Relaxed));
    if age < 5_000_000_000 {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("event loop stalled for {:.1}s\n", age as f64 / 1e9),
        )
            .into_response()
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until the
/// task is dropped.
pub async fn serve(listener: TcpListener, router: Router, tls: Option<Arc<rustls::ServerConfig>>) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                warn!("accept on the metrics endpoint: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(true);
            let served = async {
                match acceptor {
                    None => {
                        builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    }
                    Some(acceptor) => {
                        let tls =
                            match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(e)) => {
                                    debug!(%peer, "TLS handshake: {e}");
                                    return Ok(());
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return Ok(());
                                }
                            };
                        builder.serve_connection(TokioIo::new(tls), service).await
                    }
                }
            };
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, "HTTP connection: {e}"),
                Err(_) => debug!(%peer, "HTTP connection closed after {CONNECTION_TIMEOUT:?}"),
            }
            drop(permit);
        });
    }
}

/// Parses `--web.listen-address`: `:9867`, `0.0.0.0:9867`, `127.0.0.1:0`, `[::1]:9867`.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse()
        .map_err(|_| format!("{s:?} is not an address like :9867 or 127.0.0.1:9867"))
}
