//! Request metrics for every HTTP service, on the process-wide registry.

use std::sync::LazyLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};

/// Requests answered, by service, route template, method and status class.
pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_int_counter_vec!(
        Opts::new(
            "switchboard_http_requests_total",
            "HTTP requests answered, by service, route template, method and status class."
        ),
        &["service", "route", "method", "status"]
    )
    .expect("metric registers once")
});

/// Time to answer, by service and route template.
pub static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    #[allow(clippy::expect_used)]
    prometheus::register_histogram_vec!(
        HistogramOpts::new(
            "switchboard_http_request_duration_seconds",
            "Time to answer HTTP requests, by service and route template."
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5
        ]),
        &["service", "route"]
    )
    .expect("metric registers once")
});

/// Middleware: `axum::middleware::from_fn_with_state(service_name, track)`.
/// Labels are bounded: the route template, never the concrete path.
pub async fn track(
    axum::extract::State(service): axum::extract::State<&'static str>,
    req: Request,
    next: Next,
) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    let status = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    REQUESTS
        .with_label_values(&[service, route.as_str(), method, status])
        .inc();
    DURATION
        .with_label_values(&[service, route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}
