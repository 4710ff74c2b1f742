//! `switchboard.v1.ChatService` over gRPC: each RPC reads the principal,
//! converts the request, calls [`Chat`], and converts the answer back.
//! Input constraints declared in the proto are checked before these methods
//! run, but nothing here relies on that to stay panic-free.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use switchboard_core::chat::{Chat, ConversationPatch};
use switchboard_core::shutdown::ShutdownSignal;
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::chat_service_server::ChatService;
use tonic::{Request, Response, Status};

use crate::caller::principal;
use crate::convert::{self, IntoProto};
use crate::status::status_from;

/// The events of StreamReply, as tonic sends them.
pub type ReplyEventStream = Pin<Box<dyn Stream<Item = Result<pb::ReplyEvent, Status>> + Send>>;

/// The gRPC ChatService, backed by the domain's [`Chat`].
#[derive(Debug, Clone)]
pub struct ChatApi {
    chat: Arc<Chat>,
    /// Turns true when the server's shutdown grace has run out.
    streams_ending: Option<ShutdownSignal>,
}

/// What a StreamReply cut short by shutdown ends with.
const STREAM_ENDED_BY_SHUTDOWN: &str = "the server is shutting down; \
    resume the stream with after_seq set to the last seq received";

impl ChatApi {
    /// The service over `chat`.
    pub fn new(chat: Arc<Chat>) -> Self {
        Self {
            chat,
            streams_ending: None,
        }
    }

    /// Ends every open StreamReply with UNAVAILABLE once `ending` is
    /// requested (the server's shutdown grace has run out): a status after a
    /// whole event, so the client resumes from its last seq elsewhere,
    /// rather than a connection cut mid-message.
    #[must_use]
    pub fn with_streams_ending(mut self, ending: ShutdownSignal) -> Self {
        self.streams_ending = Some(ending);
        self
    }
}

/// `events` until `ending` is requested, then UNAVAILABLE.
fn until_shutdown(
    events: impl Stream<Item = Result<pb::ReplyEvent, Status>> + Send + 'static,
    ending: ShutdownSignal,
) -> ReplyEventStream {
    let state = Some((Box::pin(events), ending));
    Box::pin(futures::stream::unfold(state, |state| async move {
        let (mut events, ending) = state?;
        tokio::select! {
            // Events already there are sent before the stream is ended.
            biased;
            event = events.next() => event.map(|event| (event, Some((events, ending)))),
            () = ending.requested() => {
                Some((Err(Status::unavailable(STREAM_ENDED_BY_SHUTDOWN)), None))
            }
        }
    }))
}

#[tonic::async_trait]
impl ChatService for ChatApi {
    async fn create_conversation(
        &self,
        request: Request<pb::CreateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let who = principal(&request)?;
        let title = request
            .into_inner()
            .conversation
            .map(|c| c.title)
            .unwrap_or_default();
        let conversation = self
            .chat
            .create_conversation(&who, &title)
            .await
            .map_err(|e| status_from(e.nested_under("conversation")))?;
        Ok(Response::new(conversation.into_proto()))
    }

    async fn list_conversations(
        &self,
        request: Request<pb::ListConversationsRequest>,
    ) -> Result<Response<pb::ListConversationsResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size).map_err(status_from)?;
        let page = self
            .chat
            .list_conversations(&who, page_size, &request.page_token)
            .await
            .map_err(status_from)?;
        Ok(Response::new(page.into_proto()))
    }

    async fn get_conversation(
        &self,
        request: Request<pb::GetConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let who = principal(&request)?;
        let conversation = self
            .chat
            .get_conversation(&who, &request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(conversation.into_proto()))
    }

    async fn update_conversation(
        &self,
        request: Request<pb::UpdateConversationRequest>,
    ) -> Result<Response<pb::Conversation>, Status> {
        let who = principal(&request)?;
        let (id, patch): (String, ConversationPatch) =
            convert::conversation_update(request.into_inner()).map_err(status_from)?;
        let conversation = self
            .chat
            .update_conversation(&who, &id, patch)
            .await
            .map_err(|e| status_from(e.nested_under("conversation")))?;
        Ok(Response::new(conversation.into_proto()))
    }

    async fn delete_conversation(
        &self,
        request: Request<pb::DeleteConversationRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let who = principal(&request)?;
        self.chat
            .delete_conversation(&who, &request.into_inner().id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }

    async fn list_messages(
        &self,
        request: Request<pb::ListMessagesRequest>,
    ) -> Result<Response<pb::ListMessagesResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let page_size = convert::page_size(request.page_size).map_err(status_from)?;
        let page = self
            .chat
            .list_messages(
                &who,
                &request.conversation_id,
                page_size,
                &request.page_token,
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(page.into_proto()))
    }

    async fn send_message(
        &self,
        request: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let sent = self
            .chat
            .send_message(&who, &request.conversation_id, &request.content)
            .await
            .map_err(status_from)?;
        Ok(Response::new(sent.into_proto()))
    }

    type StreamReplyStream = ReplyEventStream;

    async fn stream_reply(
        &self,
        request: Request<pb::StreamReplyRequest>,
    ) -> Result<Response<Self::StreamReplyStream>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        // Errors (a missing reply, a user message) surface here, before the
        // first event.
        let events = self
            .chat
            .subscribe_reply(
                &who,
                &request.conversation_id,
                &request.message_id,
                request.after_seq,
            )
            .await
            .map_err(status_from)?;
        let events = events.map(|event| Ok(event.into_proto()));
        Ok(Response::new(match &self.streams_ending {
            Some(ending) => until_shutdown(events, ending.clone()),
            None => Box::pin(events),
        }))
    }

    async fn cancel_reply(
        &self,
        request: Request<pb::CancelReplyRequest>,
    ) -> Result<Response<pb::Message>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        let reply = self
            .chat
            .cancel_reply(&who, &request.conversation_id, &request.message_id)
            .await
            .map_err(status_from)?;
        Ok(Response::new(reply.into_proto()))
    }

    async fn rate_message(
        &self,
        request: Request<pb::RateMessageRequest>,
    ) -> Result<Response<pbjson_types::Empty>, Status> {
        let who = principal(&request)?;
        let request = request.into_inner();
        self.chat
            .rate_reply(
                &who,
                &request.conversation_id,
                &request.message_id,
                request.rating,
                &request.comment,
            )
            .await
            .map_err(status_from)?;
        Ok(Response::new(pbjson_types::Empty {}))
    }
}
