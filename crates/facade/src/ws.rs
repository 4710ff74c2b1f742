//! `/v1/ws`: replies streamed over a WebSocket, for front ends that keep one
//! socket open instead of one stream per reply.
//!
//! The upgrade request passes the same authentication layer as every other
//! request, and the same access rule decides: the WebSocket stands for
//! `ChatService.StreamReply`, so [`authorize`] runs with that method's
//! generated policy before the upgrade, and each frame's fields are checked
//! with that method's generated field rules, so a frame is refused with the
//! very INVALID_ARGUMENT gRPC and REST give the same input. A browser, which cannot set headers
//! on a WebSocket, sends its token as a subprotocol (`bearer.<token>`, next
//! to `switchboard.v1`).
//!
//! The credential is checked again before each new subscription and every
//! `auth.credential_recheck_secs` (30 seconds), with the same
//! [`SessionCheck`] and interval as every other stream, so a socket of a
//! session that logged out, of a revoked key or of an account that was
//! disabled gets an UNAUTHENTICATED error frame and is closed, even while
//! it only listens.
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
//! When the server begins to shut down, a new subscription is refused with
//! UNAVAILABLE ("the server is shutting down") and a socket with none left
//! under way is closed (1001, going away); when the shutdown grace runs out,
//! each subscription still open gets an UNAVAILABLE error frame, after its
//! last whole event, and the socket is closed, so the client resumes
//! elsewhere from the last `seq` it saw.
//!
//! Events of all subscriptions of a socket go through one bounded queue to
//! the writer: a slow client slows its own subscriptions down (the reply log
//! is shared and not copied per subscriber), and the server never buffers
//! without bound.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use switchboard_api::convert::IntoProto;
use switchboard_core::chat::{Chat, ReplyStream};
use switchboard_core::identity::Principal;
use switchboard_core::shutdown::ShutdownSignal;
use switchboard_proto::v1;
use switchboard_rest::policy::{Caller, authorize};
use switchboard_rest::session::SessionCheck;
use switchboard_rest::validate::{Validate, validate_fields};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::drain::{Drain, SHUTTING_DOWN, Tracked};

/// The subprotocol the server speaks.
pub(crate) const SUBPROTOCOL: &str = "switchboard.v1";

/// The prefix of the subprotocol that carries a bearer token.
pub(crate) const BEARER_SUBPROTOCOL_PREFIX: &str = "bearer.";

/// Frames queued for a slow client before its subscriptions wait.
const OUTGOING_FRAMES: usize = 64;

/// Subscriptions one socket may hold at once.
const MAX_SUBSCRIPTIONS: usize = 32;

/// The read buffer a socket starts with. Client frames are small JSON
/// (a subscription is well under 1 KiB), and the buffer grows for a larger
/// frame; tungstenite's default, 128 KiB zero-filled at the first read, was
/// most of a socket's memory (148 KiB of server memory per open socket).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// How many bytes of frames a socket gathers before it writes them even
/// though more are queued; the writer flushes whenever its queue is empty,
/// so this only bounds a burst's single write.
const WRITE_BUFFER_BYTES: usize = 16 * 1024;

/// The largest client frame read. Every frame the client may send is a
/// subscription or an unsubscription of a few ids; tungstenite's default
/// (64 MiB) would let one socket make the server buffer that much. Frames
/// up to this size that break the rules are still read and answered with
/// an INVALID_ARGUMENT error frame in the API's words (the edge tests send
/// 1 MiB of them); only a larger one closes the socket.
const MAX_CLIENT_FRAME_BYTES: usize = 2 * 1024 * 1024;

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
    /// Left out, it is empty, and refused as StreamReply refuses it.
    #[serde(default)]
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

/// A client frame read from its JSON text, its fields checked with the
/// generated rules of the RPC it stands for (see [`check_fields`]).
///
/// # Errors
/// `INVALID_ARGUMENT`, in the API's words and naming the field at fault,
/// when the text is not JSON or is not one of the frames, and, in
/// StreamReply's own words, when a field breaks StreamReply's rules (an id
/// that is not a lowercase hyphenated UUID): the frame is refused as
/// gRPC and REST refuse the request, and its error frame echoes nothing of
/// it, for its ids may be anything.
#[allow(clippy::result_large_err)]
fn parse_frame(text: &str) -> Result<ClientFrame, tonic::Status> {
    let json: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        tonic::Status::invalid_argument(format!("the frame is not valid JSON: {error}"))
    })?;
    let frame: ClientFrame = switchboard_rest::proto_json::from_json(json)?;
    check_fields(&frame)?;
    Ok(frame)
}

/// Checks a frame with the field rules of StreamReply, whose access rule
/// admitted the socket: a reply's subscription is a whole
/// `StreamReplyRequest`, checked as the RPC checks it. Following a
/// conversation is StreamReply for each of its replies, with the reply
/// named by the server, so only the `conversation_id` the client gives is
/// checked; an unsubscription names a subscription by the same ids, and
/// those it gives are checked the same way.
///
/// # Errors
/// `INVALID_ARGUMENT` as StreamReply gives it, for the fields the frame
/// carries.
#[allow(clippy::result_large_err)]
fn check_fields(frame: &ClientFrame) -> Result<(), tonic::Status> {
    match frame {
        ClientFrame::Subscribe(Subscribe {
            conversation_id,
            message_id: Some(message_id),
            after_seq,
        }) => v1::StreamReplyRequest {
            conversation_id: conversation_id.clone(),
            message_id: message_id.clone(),
            after_seq: *after_seq,
        }
        .validate(),
        ClientFrame::Subscribe(Subscribe {
            conversation_id,
            message_id: None,
            ..
        }) => {
            let request = v1::StreamReplyRequest {
                conversation_id: conversation_id.clone(),
                ..Default::default()
            };
            validate_fields(&request, &["conversation_id"])
        }
        ClientFrame::Unsubscribe(Unsubscribe {
            conversation_id,
            message_id,
        }) => {
            let request = v1::StreamReplyRequest {
                conversation_id: conversation_id.clone().unwrap_or_default(),
                message_id: message_id.clone().unwrap_or_default(),
                after_seq: 0,
            };
            let given = [
                conversation_id.as_ref().map(|_| "conversation_id"),
                message_id.as_ref().map(|_| "message_id"),
            ];
            let given: Vec<&str> = given.into_iter().flatten().collect();
            validate_fields(&request, &given)
        }
    }
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
pub(crate) async fn upgrade(chat: Arc<Chat>, drain: Drain, request: Request) -> Response {
    let caller = request.extensions().get::<Caller>().cloned();
    if let Err(status) = authorize(caller.as_ref(), &v1::CHAT_SERVICE_STREAM_REPLY_POLICY) {
        return switchboard_rest::error::status_response(&status);
    }
    let (Some(principal), Some(session)) = (
        request.extensions().get::<Principal>().cloned(),
        request.extensions().get::<SessionCheck>().cloned(),
    ) else {
        return switchboard_rest::error::status_response(&tonic::Status::unauthenticated(
            "sign in: this method needs a bearer token or an API key",
        ));
    };
    // The socket keeps the upgrade request's place in the drain.
    let place = request.extensions().get::<Tracked>().cloned();
    let (mut parts, _body) = request.into_parts();
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => return rejection.into_response(),
    };
    upgrade
        .protocols([SUBPROTOCOL])
        .read_buffer_size(READ_BUFFER_BYTES)
        // Frames are gathered up to this size and flushed once the socket's
        // queue is empty (see the writer in `serve`): the events that reach
        // a subscriber together leave in one write, not one write each.
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_message_size(MAX_CLIENT_FRAME_BYTES)
        .max_frame_size(MAX_CLIENT_FRAME_BYTES)
        .on_upgrade({
            // The socket's logs and spans stay in the upgrade request's
            // span (its id, user and trace).
            let span = tracing::Span::current();
            move |socket| {
                async move {
                    let _open = crate::metrics::OpenStreamGuard::new("websocket");
                    let socket_session = Session {
                        chat,
                        principal,
                        session,
                        drain,
                    };
                    serve(socket, socket_session).await;
                    drop(place);
                }
                .instrument(span)
            }
        })
}

/// What one socket serves, for whom, and how it ends.
struct Session {
    chat: Arc<Chat>,
    principal: Principal,
    /// Checks the socket's credential again before each new subscription
    /// and at its interval.
    session: SessionCheck,
    drain: Drain,
}

/// How often a draining socket looks whether its subscriptions are done.
const DRAIN_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Serves one socket until the client closes it, until its credential
/// stops working, or until the server's shutdown has nothing left for it.
async fn serve(socket: WebSocket, socket_session: Session) {
    let Session {
        chat,
        principal,
        session,
        drain,
    } = socket_session;
    let (mut sink, mut incoming) = socket.split();
    let (outgoing, mut queued) = mpsc::channel::<String>(OUTGOING_FRAMES);
    let going_away = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let going_away = going_away.clone();
        async move {
            // Every frame already queued is fed, then one flush: a burst of
            // events costs one write, and nothing waits once the queue is
            // empty.
            'writing: while let Some(text) = queued.recv().await {
                if sink.feed(Message::Text(text.into())).await.is_err() {
                    break;
                }
                while let Ok(text) = queued.try_recv() {
                    if sink.feed(Message::Text(text.into())).await.is_err() {
                        break 'writing;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            if going_away.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: close_code::AWAY,
                        reason: SHUTTING_DOWN.into(),
                    })))
                    .await;
            }
            let _ = sink.close().await;
        }
    });
    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut recheck = tokio::time::interval(session.interval());
    // A loop held up by a slow client checks once when it gets back, not
    // once for every interval it missed.
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.tick().await;
    let mut draining = drain.draining();
    let ending = drain.streams_ending();
    loop {
        if *draining.borrow_and_update() {
            subscriptions.retain(|_, task| !task.is_finished());
            if subscriptions.is_empty() {
                going_away.store(true, std::sync::atomic::Ordering::Relaxed);
                break;
            }
        }
        let frame = tokio::select! {
            frame = incoming.next() => frame,
            // Draining: look again soon whether the subscriptions are done
            // (each ends by itself when the grace runs out).
            _ = draining.changed() => continue,
            () = tokio::time::sleep(DRAIN_CHECK_INTERVAL), if drain.is_draining() => continue,
            _ = recheck.tick() => {
                let Err(status) = session.recheck().await else {
                    continue;
                };
                // Nothing more of the subscriptions goes out once the
                // credential is refused: they stop before the error is queued.
                stop_all(&mut subscriptions);
                let _ = outgoing.send(error_frame("", None, &status)).await;
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
            Ok(ClientFrame::Subscribe(subscribe)) if drain.is_draining() => Some(error_frame(
                &subscribe.conversation_id,
                subscribe.message_id.as_deref(),
                &tonic::Status::unavailable(SHUTTING_DOWN),
            )),
            Ok(ClientFrame::Subscribe(subscribe)) => {
                if let Err(status) = session.recheck().await {
                    stop_all(&mut subscriptions);
                    let refused = error_frame(
                        &subscribe.conversation_id,
                        subscribe.message_id.as_deref(),
                        &status,
                    );
                    let _ = outgoing.send(refused).await;
                    break;
                }
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
                                ending.clone(),
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
                                ending.clone(),
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

/// Stops every subscription of a socket at once.
fn stop_all(subscriptions: &mut HashMap<String, JoinHandle<()>>) {
    for (_, task) in subscriptions.drain() {
        task.abort();
    }
}

/// Sends each event of one reply as a frame, until its final event, or
/// until the shutdown grace runs out (then an UNAVAILABLE error frame).
async fn forward_reply(
    mut events: ReplyStream,
    conversation_id: String,
    message_id: String,
    outgoing: mpsc::Sender<String>,
    ending: ShutdownSignal,
) {
    loop {
        let event = tokio::select! {
            biased;
            event = events.next() => event,
            () = ending.requested() => {
                let ended = error_frame(
                    &conversation_id,
                    Some(&message_id),
                    &tonic::Status::unavailable(format!(
                        "{SHUTTING_DOWN}; subscribe again with afterSeq set to the last seq received"
                    )),
                );
                let _ = outgoing.send(ended).await;
                return;
            }
        };
        let Some(event) = event else { return };
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
    ending: ShutdownSignal,
) {
    let mut following = tokio::task::JoinSet::new();
    loop {
        let reply = tokio::select! {
            reply = replies.next() => reply,
            () = ending.requested() => {
                // The replies under way say so themselves, then the
                // conversation does.
                while following.join_next().await.is_some() {}
                let ended = error_frame(
                    &conversation_id,
                    None,
                    &tonic::Status::unavailable(SHUTTING_DOWN),
                );
                let _ = outgoing.send(ended).await;
                return;
            }
        };
        let Some(reply) = reply else { break };
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
                    ending.clone(),
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
