//! Reply engines: what turns a conversation into the bot's next message, as
//! a stream of tokens. [`DevEngine`] is the built-in development engine;
//! real engines (the gRPC engine contract, OpenAI-compatible HTTP) implement
//! the same [`ReplyEngine`] trait.

use std::collections::VecDeque;
use std::time::Duration;

use futures::stream::{self, BoxStream, StreamExt};

use crate::chat::model::{Message, Role};
use crate::error::{Error, Result};

/// Token usage the engine reports for one reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens of the prompt (the history sent).
    pub prompt_tokens: u32,
    /// Tokens of the reply.
    pub completion_tokens: u32,
}

/// What an engine sends while it generates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// The next piece of text.
    Delta(String),
    /// Token counts, usually at the end.
    Usage(Usage),
}

/// The events of one reply. An `Err` item ends the reply as failed; the
/// stream ending ends it as complete.
pub type EngineStream = BoxStream<'static, Result<EngineEvent>>;

/// What an engine is asked.
#[derive(Debug, Clone)]
pub struct EngineRequest {
    /// The conversation.
    pub conversation_id: String,
    /// The reply being generated.
    pub reply_id: String,
    /// Which attempt at the reply this is, from 1.
    pub attempt: u32,
    /// The finished messages of the conversation, oldest first; the last
    /// one is usually the user's.
    pub history: Vec<Message>,
    /// The W3C trace context of the engine call (`traceparent` and
    /// `tracestate`), to send as gRPC metadata or HTTP headers so that an
    /// engine that speaks OpenTelemetry joins the trace; empty when tracing
    /// is off.
    pub trace_fields: Vec<(String, String)>,
}

/// Generates replies.
pub trait ReplyEngine: Send + Sync {
    /// Starts generating the reply `request` asks for. The stream is
    /// dropped early if the reply is cancelled; dropping it must abort the
    /// underlying call.
    fn generate(&self, request: EngineRequest) -> EngineStream;

    /// A short name for logs and metrics: `dev`, `grpc`, `openai`.
    fn name(&self) -> &'static str;
}

/// The development engine: deterministic, offline, and steerable by tests.
///
/// It answers every message with [`DevEngine::reply_text`] (it quotes the
/// user's last message, then adds two fixed sentences), one word-sized token
/// at a time (each token is a word with the whitespace before it), pausing
/// `token_delay` before each token.
///
/// After the text it reports usage: the words of the history and of the
/// reply.
///
/// Markers in the user's last message change its behaviour:
/// * `[dev:fail]` — fails after two tokens with an `UNAVAILABLE` engine error;
/// * `[dev:fail-attempts=N]` — fails like `[dev:fail]` in attempts 1 to N of
///   the reply, and answers normally from attempt N+1 (for retries);
/// * `[dev:stall]` — stops after two tokens and waits until the reply is
///   cancelled (or `engine.resilience.call_timeout_ms` ends the attempt).
#[derive(Debug, Clone, Default)]
pub struct DevEngine {
    token_delay: Duration,
}

/// How many tokens [`DevEngine`] sends before failing or stalling.
const TOKENS_BEFORE_MARKER: usize = 2;

/// The longest quote of the user's message, in characters.
const MAX_QUOTE_CHARS: usize = 80;

enum Ending {
    Complete,
    Fail,
    Stall,
}

impl DevEngine {
    /// The marker that makes the engine fail after two tokens.
    pub const FAIL_MARKER: &'static str = "[dev:fail]";

    /// The marker that makes the engine stall after two tokens.
    pub const STALL_MARKER: &'static str = "[dev:stall]";

    /// An engine that pauses `token_delay` before each token (zero: none).
    pub fn new(token_delay: Duration) -> Self {
        Self { token_delay }
    }

    /// The full reply to a user message `content` (the text a complete
    /// reply has; a failing or stalling one stops after two tokens of it).
    pub fn reply_text(content: &str) -> String {
        let words: Vec<&str> = content.split_whitespace().collect();
        let mut quote: String = words.join(" ");
        if quote.chars().count() > MAX_QUOTE_CHARS {
            quote = quote.chars().take(MAX_QUOTE_CHARS).collect();
            quote.push('…');
        }
        format!(
            "You said: \"{quote}\". I am Switchboard's development engine, so I answer every \
             message in the same way. Connect a real engine to get real answers."
        )
    }

    /// Splits `text` into the tokens the engine sends: each is a run of
    /// whitespace followed by a word, so the tokens join back into `text`.
    pub fn tokens(text: &str) -> Vec<String> {
        let mut tokens = Vec::new();
        let mut start = 0;
        let mut previous_was_space = true;
        for (i, c) in text.char_indices() {
            if c.is_whitespace() && !previous_was_space {
                tokens.push(text[start..i].to_owned());
                start = i;
            }
            previous_was_space = c.is_whitespace();
        }
        if start < text.len() {
            tokens.push(text[start..].to_owned());
        }
        tokens
    }
}

/// Whether `prompt` asks attempt `attempt` to fail with
/// `[dev:fail-attempts=N]`.
fn fails_in_attempt(prompt: &str, attempt: u32) -> bool {
    const MARKER: &str = "[dev:fail-attempts=";
    let Some(start) = prompt.find(MARKER) else {
        return false;
    };
    let rest = &prompt[start + MARKER.len()..];
    rest.split(']')
        .next()
        .and_then(|n| n.parse::<u32>().ok())
        .is_some_and(|n| attempt <= n)
}

impl ReplyEngine for DevEngine {
    fn generate(&self, request: EngineRequest) -> EngineStream {
        let history = &request.history;
        let prompt = history
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map_or("", |m| m.content.as_str());
        let text = Self::reply_text(prompt);
        let usage = Usage {
            prompt_tokens: count_words(history.iter().map(|m| m.content.as_str())),
            completion_tokens: count_words([text.as_str()]),
        };
        let mut tokens: VecDeque<String> = Self::tokens(&text).into();
        let ending =
            if prompt.contains(Self::FAIL_MARKER) || fails_in_attempt(prompt, request.attempt) {
                Ending::Fail
            } else if prompt.contains(Self::STALL_MARKER) {
                Ending::Stall
            } else {
                Ending::Complete
            };
        if !matches!(ending, Ending::Complete) {
            tokens.truncate(TOKENS_BEFORE_MARKER);
        }
        let delay = self.token_delay;
        stream::unfold(
            Some((tokens, ending, Some(usage))),
            move |state| async move {
                let (mut tokens, ending, usage) = state?;
                if !delay.is_zero() && !tokens.is_empty() {
                    tokio::time::sleep(delay).await;
                }
                match (tokens.pop_front(), ending) {
                    (Some(token), ending) => {
                        Some((Ok(EngineEvent::Delta(token)), Some((tokens, ending, usage))))
                    }
                    (None, Ending::Complete) => {
                        usage.map(|usage| (Ok(EngineEvent::Usage(usage)), None))
                    }
                    (None, Ending::Fail) => Some((
                        Err(Error::Unavailable(format!(
                            "the development engine failed on purpose ({})",
                            DevEngine::FAIL_MARKER
                        ))),
                        None,
                    )),
                    (None, Ending::Stall) => {
                        std::future::pending::<()>().await;
                        None
                    }
                }
            },
        )
        .boxed()
    }

    fn name(&self) -> &'static str {
        "dev"
    }
}

/// Words in `texts`, the development engine's stand-in for tokens.
fn count_words<'a>(texts: impl IntoIterator<Item = &'a str>) -> u32 {
    let words: usize = texts
        .into_iter()
        .map(|t| t.split_whitespace().count())
        .sum();
    u32::try_from(words).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_join_back_into_the_text() {
        let text = DevEngine::reply_text("  hello\n  world ");
        let tokens = DevEngine::tokens(&text);
        assert_eq!(tokens.concat(), text);
        assert_eq!(tokens[..3], ["You", " said:", " \"hello"]);
        assert_eq!(DevEngine::tokens(" a  b"), [" a", "  b"]);
    }

    #[test]
    fn long_messages_are_quoted_in_part() {
        let text = DevEngine::reply_text(&"é".repeat(500));
        assert!(text.contains(&format!("{}…", "é".repeat(MAX_QUOTE_CHARS))));
    }
}
