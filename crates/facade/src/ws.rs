//! `/v1/ws`: replies streamed over a WebSocket, for front ends that keep one
//! socket open instead of one stream per reply.
//!
//! The upgrade request passes the same authentication layer as every other
//! request, and the same access rule decides: the WebSocket stands for
//! `ChatService.StreamReply`, so [`authorize`] runs with that method's
//! generated policy before the upgrade. A browser, which cannot set headers
//! on a WebSocket, sends its token as a subprotocol (`bearer.<token>`, next
//! to `switchboard.v1`).
//!
//! The credential is checked again before each new subscription, so a
//! socket of a session that logged out, or of an account that was disabled,
//! gets an UNAUTHENTICATED error frame and is closed.
//!
//! Frames are JSON text. The client sends
//! `{"subscribe": {"conversationId", "messageId", "afterSeq"}}` (and
//! `{"unsubscribe": {"messageId"}}`); the server answers each event of the
//! reply as `{"messageId", "event": ReplyEvent}` — the same proto3 JSON as
//! the SSE stream — or `{"messageId", "error": google.rpc.Status}` when the
//! subscription is refused (a reply of another user is NOT_FOUND, as
//! everywhere). A client that resumes with the last `seq` it saw as
//! `afterSeq` gets the rest, with no gap and no duplicate.
//!
//! Events of all subscriptions of a socket go through one bounded queue to
//! the writer: a slow client slows its own subscriptions down (the reply log
//! is shared and not copied per subscriber), and the server never buffers
//! without bound.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use switchboard_api::convert::IntoProto;
use switchboard_core::chat::Chat;
use switchboard_core::identity::{Identity, Principal};
use switchboard_proto::v1;
use switchboard_rest::policy::{Caller, authorize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The subprotocol the server speaks.
pub(crate) const SUBPROTOCOL: &str = "switchboard.v1";

/// The prefix of the subprotocol that carries a bearer token.
pub(crate) const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Frames queued for a slow client before its subscriptions wait.
const OUTGOING_FRAMES: usize = 64;

/// Subscriptions one socket may hold at once.
const MAX_SUBSCRIPTIONS: usize = 32;

/// A frame from the client.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum ClientFrame {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Subscribe {
    conversation_id: String,
    message_id: String,
    #[serde(default)]
    after_seq: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Unsubscribe {
    message_id: String,
}

/// The token a browser sends as a `bearer.<token>` subprotocol, if any.
pub(crate) fn subprotocol_token(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
        .map(str::to_owned)
}

/// `GET /v1/ws`: checks the caller against StreamReply's rule, then upgrades.
pub(crate) async fn upgrade(
    chat: Arc<Chat>,
    identity: Arc<Identity>,
    request: Request,
) -> Response {
    let caller = request.extensions().get::<Caller>().cloned();
    if let Err(status) = authorize(caller.as_ref(), &v1::CHAT_SERVICE_STREAM_REPLY_POLICY) {
        return switchboard_rest::error::status_response(&status);
    }
    let Some(principal) = request.extensions().get::<Principal>().cloned() else {
        return switchboard_rest::error::status_response(&tonic::Status::unauthenticated(
            "sign in: this method needs a bearer token or an API key",
        ));
    };
    let credential = crate::auth::credential(&request).unwrap_or_default();
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        .protocols([SUBPROTOCOL])
        .on_upgrade(move |socket| serve(socket, chat, identity, principal, credential))
}

/// Whether the credential the socket was opened with still authenticates
/// the same account (not logged out, revoked, disabled or expired since).
async fn still_signed_in(identity: &Identity, credential: &str, principal: &Principal) -> bool {
    matches!(
        identity.authenticate(credential).await,
        Ok(Some(current)) if current.user_id == principal.user_id
    )
}

/// Serves one socket until the client closes it, or until its credential
/// stops working: it is checked again before each new subscription.
async fn serve(
    socket: WebSocket,
    chat: Arc<Chat>,
    identity: Arc<Identity>,
    principal: Principal,
    credential: String,
) {
    let (mut sink, mut incoming) = socket.split();
    let (outgoing, mut queued) = mpsc::channel::<String>(OUTGOING_FRAMES);
    let writer = tokio::spawn(async move {
        while let Some(text) = queued.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    while let Some(Ok(frame)) = incoming.next().await {
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(_) => break,
            // Pings are answered by the library; binary frames are not ours.
            _ => continue,
        };
        subscriptions.retain(|_, task| !task.is_finished());
        let reply = match serde_json::from_str::<ClientFrame>(&text) {
            Err(error) => Some(error_frame(
                "",
                &tonic::Status::invalid_argument(format!("not a client frame: {error}")),
            )),
            Ok(ClientFrame::Unsubscribe(Unsubscribe { message_id })) => {
                if let Some(task) = subscriptions.remove(&message_id) {
                    task.abort();
                }
                None
            }
            Ok(ClientFrame::Subscribe(subscribe)) if subscriptions.len() >= MAX_SUBSCRIPTIONS => {
                Some(error_frame(
                    &subscribe.message_id,
                    &tonic::Status::resource_exhausted(format!(
                        "at most {MAX_SUBSCRIPTIONS} subscriptions per socket"
                    )),
                ))
            }
            Ok(ClientFrame::Subscribe(subscribe))
                if !still_signed_in(&identity, &credential, &principal).await =>
            {
                let refused = error_frame(
                    &subscribe.message_id,
                    &tonic::Status::unauthenticated(
                        "the credentials are invalid, expired or revoked",
                    ),
                );
                let _ = outgoing.send(refused).await;
                break;
            }
            Ok(ClientFrame::Subscribe(subscribe)) => {
                match chat
                    .subscribe_reply(
                        &principal,
                        &subscribe.conversation_id,
                        &subscribe.message_id,
                        subscribe.after_seq,
                    )
                    .await
                {
                    Err(error) => Some(error_frame(
                        &subscribe.message_id,
                        &switchboard_api::status_from(error),
                    )),
                    Ok(mut events) => {
                        let outgoing = outgoing.clone();
                        let message_id = subscribe.message_id.clone();
                        let task = tokio::spawn(async move {
                            while let Some(event) = events.next().await {
                                let frame = serde_json::json!({
                                    "messageId": message_id,
                                    "event": event.into_proto(),
                                });
                                if outgoing.send(frame.to_string()).await.is_err() {
                                    break;
                                }
                            }
                        });
                        if let Some(previous) = subscriptions.insert(subscribe.message_id, task) {
                            previous.abort();
                        }
                        None
                    }
                }
            }
        };
        if let Some(frame) = reply
            && outgoing.send(frame).await.is_err()
        {
            break;
        }
    }
    for task in subscriptions.into_values() {
        task.abort();
    }
    drop(outgoing);
    let _ = writer.await;
}

fn error_frame(message_id: &str, status: &tonic::Status) -> String {
    serde_json::json!({
        "messageId": message_id,
        "error": switchboard_rest::error::status_json(status),
    })
    .to_string()
}
