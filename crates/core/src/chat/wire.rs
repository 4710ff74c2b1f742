//! How reply events travel between instances on the Redis bus: one JSON
//! object per event, `{"delta": "…"}`, `{"reset": 2}`, `{"usage": [12, 30]}`,
//! `{"error": {"code": …, "message": …}}` or `{"done": {…message…}}`, with
//! the seq beside it (the bus keeps it).

use serde_json::{Value, json};

use crate::chat::engine::Usage;
use crate::chat::events::{ReplyEvent, ReplyEventKind};
use crate::chat::model::Message;
use crate::db::{from_micros, micros};
use crate::error::{Error, Result};

/// The JSON of an event's kind.
pub(crate) fn encode(kind: &ReplyEventKind) -> String {
    let value = match kind {
        ReplyEventKind::Delta(text) => json!({ "delta": text }),
        ReplyEventKind::Reset { attempt } => json!({ "reset": attempt }),
        ReplyEventKind::Usage(usage) => {
            json!({ "usage": [usage.prompt_tokens, usage.completion_tokens] })
        }
        ReplyEventKind::Error { code, message } => {
            json!({ "error": { "code": code, "message": message } })
        }
        ReplyEventKind::Done(message) => json!({ "done": {
            "id": message.id,
            "conversation_id": message.conversation_id,
            "role": message.role.as_str(),
            "content": message.content,
            "status": message.status.as_str(),
            "created_at": micros(message.created_at),
            "updated_at": micros(message.updated_at),
        }}),
    };
    value.to_string()
}

/// The event `seq` whose kind is the JSON `text`.
///
/// # Errors
///
/// [`Error::Internal`] for JSON this module did not write.
pub(crate) fn decode(seq: u32, text: &str) -> Result<ReplyEvent> {
    let bad = || Error::internal(format!("unreadable reply event {seq}: {text}"));
    let value: Value = serde_json::from_str(text).map_err(|_| bad())?;
    let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let kind = if let Some(text) = value.get("delta").and_then(Value::as_str) {
        ReplyEventKind::Delta(text.to_owned())
    } else if let Some(attempt) = value.get("reset").and_then(Value::as_u64) {
        ReplyEventKind::Reset {
            attempt: u32::try_from(attempt).map_err(|_| bad())?,
        }
    } else if let Some([prompt, completion]) = value
        .get("usage")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
    {
        let count = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(bad)
        };
        ReplyEventKind::Usage(Usage {
            prompt_tokens: count(prompt)?,
            completion_tokens: count(completion)?,
        })
    } else if let Some(error) = value.get("error") {
        ReplyEventKind::Error {
            code: str_of(error, "code").ok_or_else(bad)?,
            message: str_of(error, "message").ok_or_else(bad)?,
        }
    } else if let Some(done) = value.get("done") {
        let field = |key| str_of(done, key).ok_or_else(bad);
        let time = |key: &str| {
            done.get(key)
                .and_then(Value::as_i64)
                .ok_or_else(bad)
                .and_then(from_micros)
        };
        ReplyEventKind::Done(Message {
            id: field("id")?,
            conversation_id: field("conversation_id")?,
            role: field("role")?.parse()?,
            content: field("content")?,
            status: field("status")?.parse()?,
            created_at: time("created_at")?,
            updated_at: time("updated_at")?,
        })
    } else {
        return Err(bad());
    };
    Ok(ReplyEvent { seq, kind })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::model::{MessageStatus, Role};

    #[test]
    fn every_kind_survives_the_trip() {
        let at = crate::db::now();
        let kinds = [
            ReplyEventKind::Delta("héllo \"x\"\n".into()),
            ReplyEventKind::Reset { attempt: 3 },
            ReplyEventKind::Usage(Usage {
                prompt_tokens: 7,
                completion_tokens: 9,
            }),
            ReplyEventKind::Error {
                code: "CANCELLED".into(),
                message: "stop".into(),
            },
            ReplyEventKind::Done(Message {
                id: "m".into(),
                conversation_id: "c".into(),
                role: Role::Assistant,
                content: "text".into(),
                status: MessageStatus::Complete,
                created_at: at,
                updated_at: at,
            }),
        ];
        for (seq, kind) in (1..).zip(kinds) {
            let event = decode(seq, &encode(&kind)).unwrap();
            assert_eq!(event, ReplyEvent { seq, kind });
        }
        assert!(decode(1, "{\"what\": 1}").is_err());
    }
}
