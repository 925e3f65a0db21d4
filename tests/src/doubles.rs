//! Test doubles of the internet services the messengers talk to, on
//! loopback: they speak the documented wire formats (the Telegram Bot API,
//! VK's `messages.send`, Viber's `send_message`, Roistat's orders API, the
//! CoMagic/UIS Data API), check the credentials the
//! real services check, and record every request for the test to inspect.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// One request a double received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The API method (`sendMessage`, `messages.send`, `send_message`).
    pub method: String,
    pub headers: HeaderMap,
    /// The body as JSON (forms are turned into a JSON object).
    pub body: Value,
}

#[derive(Debug, Default)]
struct Shared {
    seen: Mutex<Vec<Seen>>,
    updates: Mutex<VecDeque<Value>>,
    files: Mutex<Vec<(String, Vec<u8>)>>,
    news: Notify,
}

/// A running double; dropping it stops the server.
#[derive(Debug)]
pub struct Double {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Double {
    async fn serve(router: Router, shared: Arc<Shared>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(Self {
            addr,
            shared,
            _stop: stop,
        })
    }

    /// `http://127.0.0.1:<port>`: the `api_url` to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request of `method` so far.
    pub fn seen(&self, method: &str) -> Vec<Seen> {
        lock(&self.shared.seen)
            .iter()
            .filter(|s| s.method.eq_ignore_ascii_case(method))
            .cloned()
            .collect()
    }

    /// Waits (at most `within`) for `n` requests of `method`.
    pub async fn wait_for(&self, method: &str, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.seen(method);
            if seen.len() >= n || tokio::time::Instant::now() > deadline {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Telegram: queues an update for `getUpdates` (its `update_id` set).
    pub fn push_update(&self, update: Value) {
        lock(&self.shared.updates).push_back(update);
        self.shared.news.notify_waiters();
    }

    /// Telegram: a file `getFile` and the file URL serve; VK and Viber:
    /// a file their messages link to (`<url>/media/<name>`).
    pub fn add_file(&self, file_id: &str, data: Vec<u8>) {
        lock(&self.shared.files).push((file_id.to_owned(), data));
    }

    /// The Telegram Bot API for the bot with `token`: `getUpdates` (long
    /// polling with offsets), `deleteWebhook`, `setWebhook`, `getFile`, the
    /// file download, and `sendMessage`. A wrong token gets 401 as from
    /// Telegram.
    pub async fn telegram(token: &str) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let state = (shared.clone(), Arc::new(token.to_owned()));
        let router = Router::new()
            .route("/{bot}/{method}", post(telegram_method))
            .route("/file/{bot}/{*path}", get(telegram_file))
            .with_state(state);
        Self::serve(router, shared).await
    }

    /// VK's API: `messages.send` with its `random_id` semantics (a repeated
    /// random_id sends nothing new and answers the first message's id).
    pub async fn vk(access_token: &str) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let state = (shared.clone(), Arc::new(access_token.to_owned()));
        let router = Router::new()
            .route("/method/{method}", post(vk_method))
            .route("/media/{name}", get(media_file))
            .with_state(state);
        Self::serve(router, shared).await
    }

    /// Roistat's API: `project/set-statuses` and `project/add-orders`,
    /// each with `?project=` and the `Api-key` header (an unknown key or
    /// project answers Roistat's `{"status": "error"}`); an order whose
    /// status was not set first is refused as Roistat would.
    pub async fn roistat(project: u64, api_key: &str) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let state = (shared.clone(), Arc::new(format!("{project}\n{api_key}")));
        let router = Router::new()
            .route("/project/{method}", post(roistat_method))
            .with_state(state);
        Self::serve(router, shared).await
    }

    /// The CoMagic/UIS Data API (JSON-RPC 2.0 on one address):
    /// `upload.deals_history` with the `access_token` parameter; errors as
    /// JSON-RPC error objects (-32001 for a bad token).
    pub async fn data_api(access_token: &str) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let state = (shared.clone(), Arc::new(access_token.to_owned()));
        let router = Router::new()
            .route("/", post(data_api_call))
            .with_state(state);
        Self::serve(router, shared).await
    }

    /// Viber's REST bot API: `send_message` with `X-Viber-Auth-Token`.
    pub async fn viber(auth_token: &str) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let state = (shared.clone(), Arc::new(auth_token.to_owned()));
        let router = Router::new()
            .route("/pa/{method}", post(viber_method))
            .route("/media/{name}", get(media_file))
            .with_state(state);
        Self::serve(router, shared).await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

type DoubleState = (Arc<Shared>, Arc<String>);

fn record(shared: &Shared, method: &str, headers: &HeaderMap, body: Value) {
    lock(&shared.seen).push(Seen {
        method: method.to_owned(),
        headers: headers.clone(),
        body,
    });
}

fn tg_ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn tg_error(status: StatusCode, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"ok": false, "error_code": status.as_u16(), "description": description})),
    )
        .into_response()
}

async fn telegram_method(
    State((shared, token)): State<DoubleState>,
    Path((bot, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if bot != format!("bot{token}") {
        return tg_error(StatusCode::UNAUTHORIZED, "Unauthorized");
    }
    let args: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!({}));
    record(&shared, &method, &headers, args.clone());
    match method.to_ascii_lowercase().as_str() {
        "getupdates" => {
            let offset = args["offset"].as_i64().unwrap_or(0);
            let wait = Duration::from_secs(args["timeout"].as_u64().unwrap_or(0).min(2));
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let notified = shared.news.notified();
                let ready: Vec<Value> = {
                    let mut updates = lock(&shared.updates);
                    // An offset confirms every update below it.
                    updates.retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
                    updates.iter().cloned().collect()
                };
                if !ready.is_empty() || tokio::time::Instant::now() >= deadline {
                    return tg_ok(Value::Array(ready));
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
        "deletewebhook" | "setwebhook" => tg_ok(json!(true)),
        "getfile" => {
            let id = args["file_id"].as_str().unwrap_or_default();
            let found = lock(&shared.files)
                .iter()
                .enumerate()
                .find(|(_, (f, _))| f == id)
                .map(|(i, (_, data))| (i, data.len()));
            match found {
                Some((i, size)) => tg_ok(json!({
                    "file_id": id,
                    "file_unique_id": format!("u{i}"),
                    "file_size": size,
                    "file_path": format!("files/file_{i}"),
                })),
                None => tg_error(StatusCode::BAD_REQUEST, "Bad Request: invalid file_id"),
            }
        }
        "sendmessage" => {
            let Some(chat) = args["chat_id"].as_i64() else {
                return tg_error(StatusCode::BAD_REQUEST, "Bad Request: chat not found");
            };
            let n = lock(&shared.seen).len();
            tg_ok(json!({
                "message_id": 1000 + n,
                "date": 1_764_700_000,
                "chat": {"id": chat, "type": "private", "first_name": "Customer"},
                "from": {"id": 1, "is_bot": true, "first_name": "Switchboard", "username": "switchboard_bot"},
                "text": args["text"],
            }))
        }
        _ => tg_error(StatusCode::NOT_FOUND, "Not Found: method not found"),
    }
}

async fn telegram_file(
    State((shared, token)): State<DoubleState>,
    Path((bot, path)): Path<(String, String)>,
) -> Response {
    if bot != format!("bot{token}") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let index = path
        .strip_prefix("files/file_")
        .and_then(|i| i.parse::<usize>().ok());
    match index.and_then(|i| lock(&shared.files).get(i).map(|(_, d)| d.clone())) {
        Some(data) => data.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn vk_method(
    State((shared, token)): State<DoubleState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let args: serde_json::Map<String, Value> = form
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let args = Value::Object(args);
    if args["access_token"].as_str() != Some(token.as_str()) {
        return axum::Json(json!({"error": {"error_code": 5, "error_msg": "User authorization failed: invalid access_token"}}))
            .into_response();
    }
    if method != "messages.send" {
        return axum::Json(
            json!({"error": {"error_code": 3, "error_msg": "Unknown method passed"}}),
        )
        .into_response();
    }
    let earlier = lock(&shared.seen)
        .iter()
        .position(|s| s.method == method && s.body["random_id"] == args["random_id"]);
    if let Some(i) = earlier {
        // VK: the same random_id within an hour is the same message.
        return axum::Json(json!({"response": 500 + i})).into_response();
    }
    let n = lock(&shared.seen).len();
    record(&shared, &method, &headers, args);
    axum::Json(json!({"response": 500 + n})).into_response()
}

async fn viber_method(
    State((shared, token)): State<DoubleState>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let args: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let authorised = headers
        .get("x-viber-auth-token")
        .and_then(|v| v.to_str().ok())
        == Some(token.as_str());
    if !authorised {
        return axum::Json(json!({"status": 2, "status_message": "invalidAuthToken"}))
            .into_response();
    }
    record(&shared, &method, &headers, args.clone());
    if method != "send_message" {
        return axum::Json(json!({"status": 0, "status_message": "ok"})).into_response();
    }
    if args["receiver"].as_str().is_none_or(str::is_empty) {
        return axum::Json(json!({"status": 4, "status_message": "missingData"})).into_response();
    }
    axum::Json(json!({"status": 0, "status_message": "ok", "message_token": 5_491_000_000_000_000_001_u64}))
        .into_response()
}

async fn roistat_method(
    State((shared, credentials)): State<DoubleState>,
    Path(method): Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (project, key) = credentials.split_once('\n').unwrap_or_default();
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(query.as_deref().unwrap_or("")).unwrap_or_default();
    let project_ok = query.iter().any(|(k, v)| k == "project" && v == project);
    let key_ok = headers.get("api-key").and_then(|v| v.to_str().ok()) == Some(key);
    if !project_ok || !key_ok {
        return axum::Json(json!({"status": "error", "error": "authentication_failed"}))
            .into_response();
    }
    let Ok(args) = serde_json::from_slice::<Value>(&body) else {
        return axum::Json(json!({"status": "error", "error": "incorrect_request"}))
            .into_response();
    };
    match method.as_str() {
        "set-statuses" => {}
        "add-orders" => {
            let statuses: Vec<Value> = lock(&shared.seen)
                .iter()
                .filter(|s| s.method == "set-statuses")
                .filter_map(|s| s.body.as_array().cloned())
                .flatten()
                .collect();
            let known = |status: &Value| statuses.iter().any(|s| s["id"] == *status);
            let orders = args.as_array().cloned().unwrap_or_default();
            if orders.is_empty()
                || orders
                    .iter()
                    .any(|o| !known(&o["status"]) || o["id"].is_null())
            {
                return axum::Json(json!({"status": "error", "error": "incorrect_request"}))
                    .into_response();
            }
        }
        _ => {
            return axum::Json(json!({"status": "error", "error": "unknown_method"}))
                .into_response();
        }
    }
    record(&shared, &method, &headers, args);
    axum::Json(json!({"status": "success"})).into_response()
}

async fn data_api_call(
    State((shared, token)): State<DoubleState>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(call) = serde_json::from_slice::<Value>(&body) else {
        return axum::Json(json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "Parse error"}}))
            .into_response();
    };
    let id = call["id"].clone();
    let error = |code: i64, message: &str| {
        axum::Json(json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}))
            .into_response()
    };
    if call["jsonrpc"] != "2.0" {
        return error(-32600, "Invalid Request");
    }
    if call["params"]["access_token"].as_str() != Some(token.as_str()) {
        return error(-32001, "Access token has been expired or invalid");
    }
    let method = call["method"].as_str().unwrap_or_default().to_owned();
    if method != "upload.deals_history" {
        return error(-32601, "Method not found");
    }
    let deals = call["params"]["deals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if deals.is_empty()
        || deals
            .iter()
            .any(|d| d["communication_id"].as_i64().is_none() || d["ext_id"].is_null())
    {
        return error(-32602, "Invalid params");
    }
    record(&shared, &method, &headers, call["params"].clone());
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": {"data": {"success": true}}}))
        .into_response()
}

/// A file a VK or Viber message links to (VK's and Viber's own storage).
async fn media_file(State((shared, _)): State<DoubleState>, Path(name): Path<String>) -> Response {
    let found = lock(&shared.files)
        .iter()
        .find(|(id, _)| *id == name)
        .map(|(_, d)| d.clone());
    match found {
        Some(data) => data.into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
