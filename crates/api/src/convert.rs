//! Conversions between prost messages and domain types, all in one place.
//!
//! Both sides are foreign to this crate, so the orphan rule rules out
//! `From`/`TryFrom` between them; [`IntoProto`] (domain → prost) and the
//! request readers below play that part. Prost types stop here: the
//! service code passes domain types to the core.

use switchboard_core::Error;
use switchboard_core::chat::{
    Conversation, ConversationPatch, Message, MessageStatus, Page, ReplyEvent, ReplyEventKind,
    Role, SentMessage,
};
use switchboard_proto::v1 as pb;
use switchboard_proto::{FieldMask, Timestamp};

/// A domain value's prost form.
pub trait IntoProto {
    /// The prost type.
    type Proto;

    /// Converts into the prost type.
    fn into_proto(self) -> Self::Proto;
}

impl IntoProto for Conversation {
    type Proto = pb::Conversation;

    fn into_proto(self) -> pb::Conversation {
        pb::Conversation {
            id: self.id,
            title: self.title,
            created_at: Some(Timestamp::from(self.created_at)),
            updated_at: Some(Timestamp::from(self.updated_at)),
        }
    }
}

impl IntoProto for Role {
    type Proto = pb::Role;

    fn into_proto(self) -> pb::Role {
        match self {
            Role::User => pb::Role::User,
            Role::Assistant => pb::Role::Assistant,
        }
    }
}

impl IntoProto for MessageStatus {
    type Proto = pb::MessageStatus;

    fn into_proto(self) -> pb::MessageStatus {
        match self {
            MessageStatus::Pending => pb::MessageStatus::Pending,
            MessageStatus::Streaming => pb::MessageStatus::Streaming,
            MessageStatus::Complete => pb::MessageStatus::Complete,
            MessageStatus::Failed => pb::MessageStatus::Failed,
            MessageStatus::Cancelled => pb::MessageStatus::Cancelled,
        }
    }
}

impl IntoProto for Message {
    type Proto = pb::Message;

    fn into_proto(self) -> pb::Message {
        pb::Message {
            id: self.id,
            conversation_id: self.conversation_id,
            role: self.role.into_proto().into(),
            content: self.content,
            status: self.status.into_proto().into(),
            created_at: Some(Timestamp::from(self.created_at)),
            updated_at: Some(Timestamp::from(self.updated_at)),
        }
    }
}

impl IntoProto for ReplyEvent {
    type Proto = pb::ReplyEvent;

    fn into_proto(self) -> pb::ReplyEvent {
        use pb::reply_event::Kind;
        let kind = match self.kind {
            ReplyEventKind::Delta(text) => Kind::Delta(text),
            ReplyEventKind::Done(message) => Kind::Done(message.into_proto()),
            ReplyEventKind::Error { code, message } => {
                Kind::Error(pb::ReplyError { code, message })
            }
            ReplyEventKind::Reset { attempt } => Kind::Reset(pb::ReplyReset { attempt }),
            ReplyEventKind::Usage(usage) => Kind::Usage(pb::ReplyUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            }),
        };
        pb::ReplyEvent {
            seq: self.seq,
            kind: Some(kind),
        }
    }
}

impl IntoProto for SentMessage {
    type Proto = pb::SendMessageResponse;

    fn into_proto(self) -> pb::SendMessageResponse {
        pb::SendMessageResponse {
            message: Some(self.message.into_proto()),
            reply: Some(self.reply.into_proto()),
            job_id: self.job_id,
        }
    }
}

impl IntoProto for Page<Conversation> {
    type Proto = pb::ListConversationsResponse;

    fn into_proto(self) -> pb::ListConversationsResponse {
        pb::ListConversationsResponse {
            conversations: self.items.into_iter().map(IntoProto::into_proto).collect(),
            next_page_token: self.next_page_token.unwrap_or_default(),
        }
    }
}

impl IntoProto for Page<Message> {
    type Proto = pb::ListMessagesResponse;

    fn into_proto(self) -> pb::ListMessagesResponse {
        pb::ListMessagesResponse {
            messages: self.items.into_iter().map(IntoProto::into_proto).collect(),
            next_page_token: self.next_page_token.unwrap_or_default(),
        }
    }
}

/// A request's `page_size` as the core takes it.
///
/// # Errors
///
/// [`Error::InvalidArgument`] (`page_size`) if it is negative.
pub fn page_size(page_size: i32) -> Result<u32, Error> {
    u32::try_from(page_size)
        .map_err(|_| Error::invalid_argument("page_size", "must not be negative"))
}

/// The conversation id and the changes an UpdateConversation request asks
/// for. `update_mask` names the fields to change (`title`, or `*` for all);
/// without a mask (or with an empty one) every field set in the request
/// changes, which for `title` means a non-empty one.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming `conversation` if it is missing, or
/// `update_mask` for a path that is not an updatable field.
pub fn conversation_update(
    request: pb::UpdateConversationRequest,
) -> Result<(String, ConversationPatch), Error> {
    let conversation = request
        .conversation
        .ok_or_else(|| Error::invalid_argument("conversation", "is required"))?;
    let paths = request
        .update_mask
        .map(|FieldMask { paths }| paths)
        .unwrap_or_default();
    let mut patch = ConversationPatch::default();
    if paths.is_empty() {
        if !conversation.title.is_empty() {
            patch.title = Some(conversation.title);
        }
        return Ok((conversation.id, patch));
    }
    for path in &paths {
        match path.as_str() {
            "title" | "*" => patch.title = Some(conversation.title.clone()),
            // Output-only fields are ignored in a mask (AIP-203).
            "id" | "created_at" | "updated_at" => {}
            other => {
                return Err(Error::invalid_argument(
                    "update_mask",
                    format!("`{other}` cannot be updated; updatable fields: title"),
                ));
            }
        }
    }
    Ok((conversation.id, patch))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(title: &str, paths: Option<&[&str]>) -> pb::UpdateConversationRequest {
        pb::UpdateConversationRequest {
            conversation: Some(pb::Conversation {
                id: "c".into(),
                title: title.into(),
                ..Default::default()
            }),
            update_mask: paths.map(|paths| FieldMask {
                paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            }),
        }
    }

    #[test]
    fn update_mask_selects_fields() {
        let title = |r| conversation_update(r).unwrap().1.title;
        assert_eq!(title(update("new", None)), Some("new".to_owned()));
        assert_eq!(title(update("", None)), None, "an empty title is not set");
        assert_eq!(title(update("", Some(&["title"]))), Some(String::new()));
        assert_eq!(title(update("new", Some(&[]))), Some("new".to_owned()));
        let err = conversation_update(update("x", Some(&["owner_id"]))).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field, .. } if field == "update_mask"));
    }

    #[test]
    fn negative_page_sizes_are_refused() {
        assert_eq!(page_size(7).unwrap(), 7);
        assert!(page_size(-1).is_err());
    }
}
