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
//! The credential is checked again before each new subscription and every
//! 30 seconds, so a socket of a session that logged out, or of an account
//! that was disabled, gets an UNAUTHENTICATED error frame and is closed,
//! even while it only listens.
//!
//! Frames are JSON text. The client subscribes to one reply,
//! `{"subscribe": {"conversationId", "messageId", "afterSeq"}}`, or to a
//! whole conversation, `{"subscribe": {"conversationId"}}`, and ends either
//! with `{"unsubscribe": {"messageId"}}` or `{"unsubscribe":
//! {"conversationId"}}`. The server sends each event of a reply as
//! `{"conversationId", "messageId", "event": ReplyEvent}` — the same proto3
//! JSON as the SSE stream — and, for a followed conversation, announces each
//! reply before its events as `{"conversationId", "messageId", "reply":
//! Message}`: first the replies not finished yet, then every new one
//! (whichever instance it was sent through). A refused subscription gets
//! `{"conversationId", "messageId", "error": google.rpc.Status}` (a
//! conversation or reply of another user is NOT_FOUND, as everywhere). A
//! client that resumes a reply with the last `seq` it saw as `afterSeq`
//! gets the rest, with no gap and no duplicate.
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
use switchboard_core::chat::{Chat, ReplyStream};
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

/// How often the socket's credential is checked while it is open.
const RECHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

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
    /// A reply; without it, the whole conversation.
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    after_seq: u32,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Unsubscribe {
    #[serde(default)]
    conversation_id: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
}

/// A client frame read from its JSON text.
///
/// # Errors
/// `INVALID_ARGUMENT`, in the API's words and naming the field at fault,
/// when the text is not JSON, is not one of the frames, or names an id
/// that is not one (ids are lowercase hyphenated UUIDs, as every other
/// transport checks; what is not one is refused, not echoed back).
#[allow(clippy::result_large_err)]
fn parse_frame(text: &str) -> Result<ClientFrame, tonic::Status> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        tonic::Status::invalid_argument(format!("the frame is not valid JSON: {error}"))
    })?;
    let frame: ClientFrame = switchboard_rest::proto_json::from_json(json)?;
    let (kind, conversation_id, message_id) = match &frame {
        ClientFrame::Subscribe(subscribe) => (
            "subscribe",
            Some(&subscribe.conversation_id),
            subscribe.message_id.as_ref(),
        ),
        ClientFrame::Unsubscribe(unsubscribe) => (
            "unsubscribe",
            unsubscribe.conversation_id.as_ref(),
            unsubscribe.message_id.as_ref(),
        ),
    };
    for (name, id) in [
        ("conversationId", conversation_id),
        ("messageId", message_id),
    ] {
        if id.is_some_and(|id| !is_id(id)) {
            return Err(switchboard_rest::error::invalid_field(
                &format!("{kind}.{name}"),
                "must be an id: a UUID such as 0190f3a2-7c1e-7d3b-9a4f-2b6c8d0e1f23",
            ));
        }
    }
    Ok(frame)
}

/// Whether `text` is an id as the API writes them: a UUID, lowercase and
/// hyphenated.
fn is_id(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok_and(|id| id.hyphenated().to_string() == text)
}

/// The key of a subscription in a socket's table.
fn subscription_key(conversation_id: &str, message_id: Option<&str>) -> String {
    match message_id {
        Some(message_id) => format!("reply:{message_id}"),
        None => format!("conversation:{conversation_id}"),
    }
}

/// The tokens a browser sends as `bearer.<token>` subprotocols (one, when
/// it is well-behaved).
pub(crate) fn subprotocol_tokens(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|protocol| protocol.trim().strip_prefix(BEARER_SUBPROTOCOL_PREFIX))
        .map(str::to_owned)
        .collect()
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
    // The authentication layer has refused a request with two credentials.
    let credential = crate::auth::credential(&request)
        .ok()
        .flatten()
        .unwrap_or_default();
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
    let mut recheck = tokio::time::interval(RECHECK_INTERVAL);
    recheck.tick().await;
    loop {
        let frame = tokio::select! {
            frame = incoming.next() => frame,
            _ = recheck.tick() => {
                if still_signed_in(&identity, &credential, &principal).await {
                    continue;
                }
                let refused = error_frame(
                    "",
                    None,
                    &tonic::Status::unauthenticated("the credentials are invalid, expired or revoked"),
                );
                let _ = outgoing.send(refused).await;
                break;
            }
        };
        let Some(Ok(frame)) = frame else { break };
        let text = match frame {
            Message::Text(text) => text,
            Message::Close(_) => break,
            // Pings are answered by the library; binary frames are not ours.
            _ => continue,
        };
        subscriptions.retain(|_, task| !task.is_finished());
        let reply = match parse_frame(&text) {
            // Nothing of a refused frame is echoed: its ids may be anything.
            Err(status) => Some(error_frame("", None, &status)),
            Ok(ClientFrame::Unsubscribe(Unsubscribe {
                conversation_id,
                message_id,
            })) => {
                let key = subscription_key(
                    conversation_id.as_deref().unwrap_or(""),
                    message_id.as_deref(),
                );
                if let Some(task) = subscriptions.remove(&key) {
                    task.abort();
                }
                None
            }
            Ok(ClientFrame::Subscribe(subscribe)) if subscriptions.len() >= MAX_SUBSCRIPTIONS => {
                Some(error_frame(
                    &subscribe.conversation_id,
                    subscribe.message_id.as_deref(),
                    &tonic::Status::resource_exhausted(format!(
                        "at most {MAX_SUBSCRIPTIONS} subscriptions per socket"
                    )),
                ))
            }
            Ok(ClientFrame::Subscribe(subscribe))
                if !still_signed_in(&identity, &credential, &principal).await =>
            {
                let refused = error_frame(
                    &subscribe.conversation_id,
                    subscribe.message_id.as_deref(),
                    &tonic::Status::unauthenticated(
                        "the credentials are invalid, expired or revoked",
                    ),
                );
                let _ = outgoing.send(refused).await;
                break;
            }
            Ok(ClientFrame::Subscribe(subscribe)) => {
                let key =
                    subscription_key(&subscribe.conversation_id, subscribe.message_id.as_deref());
                let started = match &subscribe.message_id {
                    Some(message_id) => chat
                        .subscribe_reply(
                            &principal,
                            &subscribe.conversation_id,
                            message_id,
                            subscribe.after_seq,
                        )
                        .await
                        .map(|events| {
                            tokio::spawn(forward_reply(
                                events,
                                subscribe.conversation_id.clone(),
                                message_id.clone(),
                                outgoing.clone(),
                            ))
                        }),
                    None => chat
                        .follow_conversation(&principal, &subscribe.conversation_id)
                        .await
                        .map(|replies| {
                            tokio::spawn(forward_conversation(
                                replies,
                                chat.clone(),
                                principal.clone(),
                                subscribe.conversation_id.clone(),
                                outgoing.clone(),
                            ))
                        }),
                };
                match started {
                    Err(error) => Some(error_frame(
                        &subscribe.conversation_id,
                        subscribe.message_id.as_deref(),
                        &switchboard_api::status_from(error),
                    )),
                    Ok(task) => {
                        if let Some(previous) = subscriptions.insert(key, task) {
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

/// Sends each event of one reply as a frame, until its final event.
async fn forward_reply(
    mut events: ReplyStream,
    conversation_id: String,
    message_id: String,
    outgoing: mpsc::Sender<String>,
) {
    while let Some(event) = events.next().await {
        let frame = serde_json::json!({
            "conversationId": conversation_id,
            "messageId": message_id,
            "event": event.into_proto(),
        });
        if outgoing.send(frame.to_string()).await.is_err() {
            break;
        }
    }
}

/// Announces each reply of a followed conversation and forwards its
/// events, until the conversation is deleted (then a NOT_FOUND frame) or the
/// subscription ends (the replies it started stop with it).
async fn forward_conversation(
    mut replies: futures::stream::BoxStream<'static, switchboard_core::chat::Message>,
    chat: Arc<Chat>,
    principal: Principal,
    conversation_id: String,
    outgoing: mpsc::Sender<String>,
) {
    let mut following = tokio::task::JoinSet::new();
    while let Some(reply) = replies.next().await {
        while following.try_join_next().is_some() {}
        let message_id = reply.id.clone();
        let announced = serde_json::json!({
            "conversationId": conversation_id,
            "messageId": message_id,
            "reply": reply.into_proto(),
        });
        if outgoing.send(announced.to_string()).await.is_err() {
            return;
        }
        match chat
            .subscribe_reply(&principal, &conversation_id, &message_id, 0)
            .await
        {
            Ok(events) => {
                following.spawn(forward_reply(
                    events,
                    conversation_id.clone(),
                    message_id,
                    outgoing.clone(),
                ));
            }
            Err(error) => {
                let refused = error_frame(
                    &conversation_id,
                    Some(&message_id),
                    &switchboard_api::status_from(error),
                );
                if outgoing.send(refused).await.is_err() {
                    return;
                }
            }
        }
    }
    // Let the replies under way finish, then say the conversation is gone.
    while following.join_next().await.is_some() {}
    let gone = error_frame(
        &conversation_id,
        None,
        &tonic::Status::not_found("conversation not found"),
    );
    let _ = outgoing.send(gone).await;
}

fn error_frame(conversation_id: &str, message_id: Option<&str>, status: &tonic::Status) -> String {
    let mut frame = serde_json::json!({
        "conversationId": conversation_id,
        "error": switchboard_rest::error::status_json(status),
    });
    if let Some(message_id) = message_id {
        frame["messageId"] = serde_json::json!(message_id);
    }
    frame.to_string()
}
