//! The site chat widget's transport: `GET /widget.js` (the script a page
//! embeds) and `GET /v1/chat/<line>/ws`, one WebSocket per visitor's tab.
//!
//! The page speaks JSON text frames:
//! - it opens with `{"type": "hello", "visitor", "token", "page", "title",
//!   "referrer", "landing"}` (visitor and token as the last `welcome` gave
//!   them, absent the first time) and gets `{"type": "welcome", "visitor",
//!   "token", "title", "team", "history": [...]}`; on a team line (the
//!   corporate chat) a hello without a valid session gets `{"type":
//!   "sign_in"}`, and the page says hello again with `user` and
//!   `password` (the employee's extension);
//! - `{"type": "message", "id", "text"}` is answered `{"type": "ack",
//!   "id", "seq"}` once the message is on disk, or `{"type": "error",
//!   "id", "error", "retry"}`;
//! - what the manager (or the visitor in another tab) says arrives as
//!   `{"type": "message", "seq", "from", "text", "at"}`.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, ORIGIN};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_adapters::messengers::{Chat, ChatError, ChatMessage, WidgetLine};
use tokio_util::sync::CancellationToken;

use crate::metrics::{CHAT_FRAMES, CHAT_SESSIONS};

/// The script pages embed.
const SCRIPT: &str = include_str!("widget.js");

/// A page must say hello this soon after connecting.
const HELLO_WITHIN: Duration = Duration::from_secs(10);

/// Largest frame a page may send.
const MAX_FRAME: usize = 128 * 1024;

/// The chat's state in the gateway's router.
#[derive(Debug, Clone)]
pub(crate) struct ChatState {
    pub(crate) chat: Chat,
    pub(crate) shutdown: CancellationToken,
}

/// The chat widget's script, for `<script src="…/widget.js"
/// data-line="<name>">` on the company's pages.
#[utoipa::path(
    get,
    path = "/widget.js",
    responses(
        (status = 200, description = "The script", content_type = "text/javascript"),
        (status = 404, description = "No chat line is configured"),
    )
)]
pub(crate) async fn script() -> Response {
    (
        [
            (CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (CACHE_CONTROL, "public, max-age=300"),
        ],
        SCRIPT,
    )
        .into_response()
}

/// A chat WebSocket (JSON text frames; the module's documentation gives
/// them): 404 for no such line, 403 for a page of an origin the line does
/// not allow.
#[utoipa::path(
    get,
    path = "/v1/chat/{line}/ws",
    params(("line" = String, Path, description = "A widget or team line's name")),
    responses(
        (status = 101, description = "The WebSocket is open"),
        (status = 400, description = "Not a WebSocket handshake"),
        (status = 403, description = "This page's origin may not open the chat"),
        (status = 404, description = "No chat line of this name"),
    )
)]
pub(crate) async fn connect(
    State(state): State<ChatState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Some(line) = state.chat.line(&name).cloned() else {
        return (StatusCode::NOT_FOUND, "no chat line of this name").into_response();
    };
    let origin = headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    if !line.allows(origin) {
        tracing::info!(line = %name, origin = ?origin, "chat refused: origin not allowed");
        return (StatusCode::FORBIDDEN, "this page may not open the chat").into_response();
    }
    ws.max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| async move {
            CHAT_SESSIONS.inc();
            if let Some(visitor) = session(&state, &line, socket).await {
                state.chat.closed(&line, &visitor);
            }
            CHAT_SESSIONS.dec();
        })
}

/// A string field, at most `max` characters.
fn field(v: &Value, key: &str, max: usize) -> Value {
    v[key].as_str().map_or(Value::Null, |s| {
        Value::String(s.chars().take(max).collect())
    })
}

async fn send(socket: &mut WebSocket, frame: &Value) -> bool {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .is_ok()
}

fn message_frame(m: &ChatMessage) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["type"] = json!("message");
    v
}

/// One tab's conversation until it closes; who it was, once known (its
/// receiver of what is said is dropped by then).
async fn session(state: &ChatState, line: &WidgetLine, mut socket: WebSocket) -> Option<String> {
    let hello = match tokio::time::timeout(HELLO_WITHIN, socket.recv()).await {
        Ok(Some(Ok(Message::Text(t)))) => serde_json::from_str::<Value>(t.as_str()).ok(),
        _ => None,
    };
    let Some(hello) = hello.filter(|h| h["type"] == "hello") else {
        let _ = send(
            &mut socket,
            &json!({"type": "error", "error": "say hello first"}),
        )
        .await;
        return None;
    };
    let (visitor, token) = match state.chat.identify(line, &hello) {
        Ok(who) => who,
        Err(e) => {
            // A team line: the page shows its sign-in form.
            let _ = send(
                &mut socket,
                &json!({"type": "sign_in", "error": e.to_string()}),
            )
            .await;
            return None;
        }
    };
    let context = json!({
        "page": field(&hello, "page", 2048),
        "title": field(&hello, "title", 300),
        "referrer": field(&hello, "referrer", 2048),
        "landing": field(&hello, "landing", 2048),
    });
    let (history, mut said) = match state.chat.open(line, &visitor).await {
        Ok(open) => open,
        Err(e) => {
            tracing::warn!(error = %e, "chat history unreadable");
            let _ = send(
                &mut socket,
                &json!({"type": "error", "error": "the chat is unavailable", "retry": true}),
            )
            .await;
            return Some(visitor);
        }
    };
    let welcome = json!({"type": "welcome", "visitor": visitor, "token": token,
        "title": line.title, "team": line.is_team(), "history": history});
    if !send(&mut socket, &welcome).await {
        return Some(visitor);
    }
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            m = said.recv() => {
                let Some(m) = m else { break };
                CHAT_FRAMES.with_label_values(&["out", "pushed"]).inc();
                if !send(&mut socket, &message_frame(&m)).await {
                    break;
                }
            }
            frame = socket.recv() => {
                let text = match frame {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                let reply = take(&state.chat, line, &visitor, text.as_str(), &context).await;
                if !send(&mut socket, &reply).await {
                    break;
                }
            }
        }
    }
    Some(visitor)
}

/// One frame from the page: what to answer.
async fn take(
    chat: &Chat,
    line: &WidgetLine,
    visitor: &str,
    frame: &str,
    context: &Value,
) -> Value {
    let Ok(v) = serde_json::from_str::<Value>(frame) else {
        CHAT_FRAMES.with_label_values(&["in", "refused"]).inc();
        return json!({"type": "error", "error": "not JSON", "retry": false});
    };
    if v["type"] != "message" {
        CHAT_FRAMES.with_label_values(&["in", "refused"]).inc();
        return json!({"type": "error", "error": "unknown frame type", "retry": false});
    }
    let id = v["id"].as_str().unwrap_or("");
    let text = v["text"].as_str().unwrap_or("");
    match chat.visitor_said(line, visitor, id, text, context).await {
        Ok(m) => {
            CHAT_FRAMES.with_label_values(&["in", "taken"]).inc();
            json!({"type": "ack", "id": id, "seq": m.seq})
        }
        Err(ChatError::Invalid(why)) => {
            CHAT_FRAMES.with_label_values(&["in", "refused"]).inc();
            json!({"type": "error", "id": id, "error": why, "retry": false})
        }
        Err(e) => {
            tracing::warn!(error = %e, "chat message not stored");
            CHAT_FRAMES.with_label_values(&["in", "unavailable"]).inc();
            json!({"type": "error", "id": id, "error": e.to_string(), "retry": true})
        }
    }
}
