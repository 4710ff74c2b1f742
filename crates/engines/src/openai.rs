//! [`OpenAiEngine`]: a reply engine reached through an OpenAI-compatible
//! `POST …/chat/completions` with `stream: true`, read as server-sent
//! events. Most model servers speak this dialect (OpenAI, vLLM, llama.cpp,
//! Ollama, LiteLLM, …), so it is the quickest way to a real engine.

use std::collections::VecDeque;
use std::fmt;

use bytes::Bytes;
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryFutureExt};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use switchboard_core::chat::{
    EngineEvent, EngineRequest, EngineStream, Message, ReplyEngine, Role, Usage,
};
use switchboard_core::{Error, Result};

pub use switchboard_core::config::DEFAULT_CONTEXT_BUDGET_CHARS;

/// The most of an error response that is read, in bytes.
const MAX_ERROR_BODY_BYTES: usize = 8 * 1024;

/// The longest piece of a server's error message quoted in an error.
const MAX_QUOTED_CHARS: usize = 300;

/// The longest server-sent-events line accepted, in bytes: a stream that
/// goes on without a line break is not an event stream.
const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How to reach an OpenAI-compatible engine and what to ask it.
#[derive(Clone)]
pub struct OpenAiEngineConfig {
    /// The API's base URL up to and including its version, as OpenAI's
    /// SDKs take it (`https://api.openai.com/v1`,
    /// `http://localhost:11434/v1`); `/chat/completions` is appended.
    pub base_url: String,
    /// The `model` to ask for.
    pub model: String,
    /// Sent as `Authorization: Bearer <key>`, if set.
    pub api_key: Option<String>,
    /// Sent first, as a `system` message, if set.
    pub system_prompt: Option<String>,
    /// How much of the conversation to send, in characters (Unicode scalar
    /// values) rather than tokens: a deliberate approximation, since the
    /// tokenizer is the server's. English averages about four characters a
    /// token (other scripts fewer), so about 3 × (the model's context window
    /// − the room a reply needs) is a safe setting. The system prompt counts
    /// against it; the newest messages that fit are sent, and the user's
    /// last message always is, even if it alone is larger.
    pub context_budget_chars: usize,
}

impl OpenAiEngineConfig {
    /// A configuration for `model` at `base_url`, without key or system
    /// prompt, and with the [`DEFAULT_CONTEXT_BUDGET_CHARS`].
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            model: model.into(),
            api_key: None,
            system_prompt: None,
            context_budget_chars: DEFAULT_CONTEXT_BUDGET_CHARS,
        }
    }
}

impl fmt::Debug for OpenAiEngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEngineConfig")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("system_prompt", &self.system_prompt)
            .field("context_budget_chars", &self.context_budget_chars)
            .finish()
    }
}

/// A [`ReplyEngine`] for OpenAI-compatible chat completions.
///
/// It asks for a stream with usage (`stream_options.include_usage`) and
/// turns each `choices[0].delta.content` into an [`EngineEvent::Delta`] and
/// the final `usage` into an [`EngineEvent::Usage`]. Dropping a reply's
/// stream drops the HTTP request and closes its connection, which is how the
/// server learns to stop.
///
/// Errors: no answer, 408, 429 and 5xx are [`Error::Unavailable`]
/// (retryable); 400, 413 and 422 (the request itself was refused, such as a
/// context overflow) are [`Error::FailedPrecondition`] quoting the server's
/// message; other 4xx (a wrong key, URL or model) are [`Error::Internal`].
/// A stream that breaks, ends before `data: [DONE]` or carries an `error`
/// object ends in [`Error::Unavailable`].
#[derive(Clone)]
pub struct OpenAiEngine {
    http: reqwest::Client,
    url: reqwest::Url,
    config: OpenAiEngineConfig,
}

impl fmt::Debug for OpenAiEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiEngine")
            .field("url", &self.url.as_str())
            .field("model", &self.config.model)
            .finish_non_exhaustive()
    }
}

impl OpenAiEngine {
    /// An engine client for `config`; it connects on the first reply.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] on field `base_url` if it is not an
    /// http(s) URL, and [`Error::Internal`] if the HTTP client cannot be
    /// built (no TLS backend).
    pub fn new(config: OpenAiEngineConfig) -> Result<Self> {
        let url = reqwest::Url::parse(&format!(
            "{}/chat/completions",
            config.base_url.trim_end_matches('/')
        ))
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https"))
        .ok_or_else(|| Error::invalid_argument("base_url", "must be an http:// or https:// URL"))?;
        let http = reqwest::Client::builder()
            .build()
            .map_err(Error::internal)?;
        Ok(Self { http, url, config })
    }

    fn request_body<'a>(&'a self, history: &'a [Message]) -> ChatCompletionRequest<'a> {
        let system = self.config.system_prompt.as_deref();
        let budget = self
            .config
            .context_budget_chars
            .saturating_sub(system.map_or(0, |prompt| prompt.chars().count()));
        let system = system.map(|content| ChatMessage {
            role: "system",
            content,
        });
        let turns = fit_history(history, budget)
            .into_iter()
            .map(|message| ChatMessage {
                role: match message.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                },
                content: &message.content,
            });
        ChatCompletionRequest {
            model: &self.config.model,
            messages: system.into_iter().chain(turns).collect(),
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
        }
    }
}

impl ReplyEngine for OpenAiEngine {
    fn generate(&self, request: EngineRequest) -> EngineStream {
        let mut call = self
            .http
            .post(self.url.clone())
            .json(&self.request_body(&request.history));
        if let Some(key) = &self.config.api_key {
            call = call.bearer_auth(key);
        }
        for (name, value) in &request.trace_fields {
            call = call.header(name.as_str(), value.as_str());
        }
        async move {
            let response = call.send().await.map_err(|err| {
                Error::Unavailable(format!(
                    "the OpenAI-compatible chatbot engine could not be reached ({})",
                    error_chain(&err.without_url())
                ))
            })?;
            let status = response.status();
            if !status.is_success() {
                return Err(status_error(status, &error_message(response).await));
            }
            let reply = SseReply {
                body: response.bytes_stream().boxed(),
                decoder: SseDecoder::default(),
                ready: VecDeque::new(),
                usage: None,
                finished: false,
            };
            Ok(stream::unfold(reply, |mut reply| async move {
                let item = reply.next().await?;
                Some((item, reply))
            }))
        }
        .try_flatten_stream()
        .boxed()
    }

    fn name(&self) -> &'static str {
        "openai"
    }
}

/// The request body of a streamed chat completion.
#[derive(Serialize)]
struct ChatCompletionRequest<'a> {
    model: &'a str,
    messages: Vec<ChatMessage<'a>>,
    stream: bool,
    stream_options: StreamOptions,
}

#[derive(Serialize)]
struct ChatMessage<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

/// One `data:` payload of the stream (`chat.completion.chunk`); only the
/// fields Switchboard reads.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<ChunkUsage>,
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Choice {
    #[serde(default)]
    index: u32,
    delta: Option<Delta>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<String>,
}

#[derive(Deserialize)]
struct ChunkUsage {
    #[serde(default)]
    prompt_tokens: u32,
    #[serde(default)]
    completion_tokens: u32,
}

/// The newest messages of `history` whose characters add up to at most
/// `budget_chars`, oldest first. The user's last message and any after it
/// are always kept. Messages are dropped from the oldest end only, so the
/// model never sees a conversation with holes, and an assistant message
/// left first by the cut goes too (it would answer a question the model no
/// longer sees). Empty messages (a reply that failed at once) are skipped.
fn fit_history(history: &[Message], budget_chars: usize) -> Vec<&Message> {
    let always_kept_from = history
        .iter()
        .rposition(|message| message.role == Role::User)
        .unwrap_or(0);
    let mut used = 0;
    let mut kept = Vec::new();
    for (index, message) in history.iter().enumerate().rev() {
        if message.content.is_empty() {
            continue;
        }
        let chars = message.content.chars().count();
        if index < always_kept_from && used + chars > budget_chars {
            while kept.len() > 1
                && kept
                    .last()
                    .is_some_and(|m: &&Message| m.role == Role::Assistant)
            {
                kept.pop();
            }
            break;
        }
        used += chars;
        kept.push(message);
    }
    kept.reverse();
    kept
}

/// The error for a response that is not a success.
fn status_error(status: StatusCode, message: &str) -> Error {
    let status_code = status.as_u16();
    if status_code == 408 || status_code == 429 || status.is_server_error() {
        Error::Unavailable(format!(
            "the OpenAI-compatible chatbot engine is unavailable ({status}): {message}"
        ))
    } else if matches!(status_code, 400 | 413 | 422) {
        Error::FailedPrecondition(format!(
            "the OpenAI-compatible chatbot engine refused the request ({status}): {message}"
        ))
    } else {
        Error::internal(format!(
            "the OpenAI-compatible chatbot engine answered {status}: {message}"
        ))
    }
}

/// The message of an error response: `error.message` (OpenAI), `error` or
/// `message` or `detail` (other servers) if the body is JSON, else the body
/// itself; whitespace collapsed and cut to [`MAX_QUOTED_CHARS`].
async fn error_message(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(Ok(chunk)) = chunks.next().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    quoted(&message_of(&body))
}

fn message_of(body: &[u8]) -> String {
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body) {
        let candidates = [
            &json["error"]["message"],
            &json["error"],
            &json["message"],
            &json["detail"],
        ];
        if let Some(message) = candidates.iter().find_map(|value| value.as_str()) {
            return message.to_owned();
        }
    }
    String::from_utf8_lossy(body).into_owned()
}

/// `text` on one line and cut to [`MAX_QUOTED_CHARS`].
fn quoted(text: &str) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let text = words.join(" ");
    let mut chars = text.chars();
    let mut quote: String = chars.by_ref().take(MAX_QUOTED_CHARS).collect();
    if chars.next().is_some() {
        quote.push('…');
    }
    if quote.is_empty() {
        quote.push_str("no message");
    }
    quote
}

/// An error and its sources, joined with ": " (reqwest's own message is
/// only the outermost layer, such as "error sending request").
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// A reply being read from the event stream.
struct SseReply {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: SseDecoder,
    /// Items decoded but not handed out yet (one network read can carry
    /// many events).
    ready: VecDeque<Result<EngineEvent>>,
    /// The latest `usage` seen; handed out once, when `[DONE]` arrives.
    usage: Option<Usage>,
    /// No more reading: `[DONE]` arrived, or the stream failed or ended.
    finished: bool,
}

impl SseReply {
    /// The next item of the reply, `None` once it is over.
    async fn next(&mut self) -> Option<Result<EngineEvent>> {
        loop {
            if let Some(item) = self.ready.pop_front() {
                return Some(item);
            }
            if self.finished {
                return None;
            }
            match self.body.next().await {
                Some(Ok(bytes)) => match self.decoder.feed(&bytes) {
                    Ok(events) => events.iter().for_each(|data| self.on_event(data)),
                    Err(err) => self.fail(err),
                },
                Some(Err(err)) => self.fail(Error::Unavailable(format!(
                    "the OpenAI-compatible chatbot engine's stream broke ({})",
                    error_chain(&err.without_url())
                ))),
                None => {
                    if let Some(data) = self.decoder.finish() {
                        self.on_event(&data);
                    }
                    if !self.finished {
                        self.fail(Error::Unavailable(
                            "the OpenAI-compatible chatbot engine's stream ended before [DONE]"
                                .to_owned(),
                        ));
                    }
                }
            }
        }
    }

    /// Handles the data of one event.
    fn on_event(&mut self, data: &str) {
        if self.finished {
            return;
        }
        if data == "[DONE]" {
            self.ready
                .extend(self.usage.take().map(EngineEvent::Usage).map(Ok));
            self.finished = true;
            return;
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(err) => {
                return self.fail(Error::internal(format!(
                    "the OpenAI-compatible chatbot engine sent an event that is not a chunk: {err}"
                )));
            }
        };
        if let Some(error) = chunk.error {
            let message = error["message"]
                .as_str()
                .map_or_else(|| error.to_string(), str::to_owned);
            return self.fail(Error::Unavailable(format!(
                "the OpenAI-compatible chatbot engine failed mid-reply: {}",
                quoted(&message)
            )));
        }
        let text = chunk
            .choices
            .into_iter()
            .filter(|choice| choice.index == 0)
            .filter_map(|choice| choice.delta?.content)
            .filter(|text| !text.is_empty());
        self.ready
            .extend(text.map(|text| Ok(EngineEvent::Delta(text))));
        if let Some(usage) = chunk.usage {
            self.usage = Some(Usage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
            });
        }
    }

    fn fail(&mut self, err: Error) {
        self.ready.push_back(Err(err));
        self.finished = true;
    }
}

/// Splits a byte stream into server-sent events and hands out each event's
/// data. Bytes are buffered until a line is complete, so lines and UTF-8
/// characters split across network reads come out whole. Lines end in LF or
/// CRLF; comments (`: keep-alive`) and fields other than `data` are skipped;
/// several `data` lines of one event are joined with LF, as the SSE
/// specification says.
#[derive(Debug, Default)]
struct SseDecoder {
    /// Bytes of a line not yet complete.
    line: Vec<u8>,
    /// The data of the event being read.
    data: Option<String>,
}

impl SseDecoder {
    /// Feeds the next bytes; returns the data of the events they complete.
    fn feed(&mut self, mut bytes: &[u8]) -> Result<Vec<String>> {
        let mut events = Vec::new();
        while let Some(end) = bytes.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&bytes[..end]);
            bytes = &bytes[end + 1..];
            let line = std::mem::take(&mut self.line);
            events.extend(self.on_line(&line));
        }
        self.line.extend_from_slice(bytes);
        if self.line.len() > MAX_LINE_BYTES {
            return Err(Error::internal(format!(
                "the OpenAI-compatible chatbot engine sent a line longer than {MAX_LINE_BYTES} bytes"
            )));
        }
        Ok(events)
    }

    /// The data of an event left unfinished when the stream ended.
    fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        self.on_line(&line).or_else(|| self.data.take())
    }

    fn on_line(&mut self, line: &[u8]) -> Option<String> {
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line));
        if line.is_empty() {
            return self.data.take();
        }
        let (field, value) = line.split_once(':').unwrap_or((&line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_core::chat::MessageStatus;

    fn decode_in_pieces(stream: &[u8], piece: usize) -> Vec<String> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for bytes in stream.chunks(piece) {
            events.extend(decoder.feed(bytes).unwrap());
        }
        events.extend(decoder.finish());
        events
    }

    #[test]
    fn events_come_out_whole_however_the_bytes_are_split() {
        let stream = ": keep-alive\r\n\r\ndata: {\"a\":\"héllo 👋\"}\r\n\r\nevent: x\ndata: 1\ndata:2\n\ndata: [DONE]\n\n";
        for piece in 1..stream.len() {
            assert_eq!(
                decode_in_pieces(stream.as_bytes(), piece),
                ["{\"a\":\"héllo 👋\"}", "1\n2", "[DONE]"],
                "pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn an_event_cut_off_by_the_end_of_the_stream_still_counts() {
        assert_eq!(decode_in_pieces(b"data: [DONE]", 4), ["[DONE]"]);
        assert_eq!(decode_in_pieces(b"data: x\n", 4), ["x"]);
    }

    #[test]
    fn endless_lines_are_refused() {
        let mut decoder = SseDecoder::default();
        assert!(decoder.feed(&vec![b'x'; MAX_LINE_BYTES + 1]).is_err());
    }

    fn message(role: Role, content: &str) -> Message {
        let now = chrono::Utc::now();
        Message {
            id: content.into(),
            conversation_id: "c".into(),
            role,
            content: content.into(),
            status: MessageStatus::Complete,
            created_at: now,
            updated_at: now,
        }
    }

    fn contents(kept: Vec<&Message>) -> Vec<&str> {
        kept.into_iter().map(|m| m.content.as_str()).collect()
    }

    #[test]
    fn the_budget_keeps_the_newest_messages() {
        let history = [
            message(Role::User, "aaaa"),
            message(Role::Assistant, "bbbb"),
            message(Role::User, "cccc"),
            message(Role::Assistant, "dddd"),
            message(Role::User, "eeee"),
        ];
        assert_eq!(
            contents(fit_history(&history, 100)),
            ["aaaa", "bbbb", "cccc", "dddd", "eeee"]
        );
        assert_eq!(
            contents(fit_history(&history, 12)),
            ["cccc", "dddd", "eeee"]
        );
        // "dddd" would be first: an answer without its question goes too.
        assert_eq!(contents(fit_history(&history, 8)), ["eeee"]);
        // The user's last message is sent even when it alone is too large.
        assert_eq!(contents(fit_history(&history, 0)), ["eeee"]);
    }

    #[test]
    fn characters_not_bytes_are_counted_and_empty_messages_skipped() {
        let history = [
            message(Role::User, "éééé"),
            message(Role::Assistant, ""),
            message(Role::User, "ü"),
        ];
        assert_eq!(contents(fit_history(&history, 5)), ["éééé", "ü"]);
    }

    #[test]
    fn error_bodies_are_quoted_from_the_usual_places() {
        let openai =
            br#"{"error":{"message":"context too\n long","type":"invalid_request_error"}}"#;
        assert_eq!(quoted(&message_of(openai)), "context too long");
        assert_eq!(message_of(br#"{"error":"no such model"}"#), "no such model");
        assert_eq!(message_of(br#"{"detail":"bad"}"#), "bad");
        assert_eq!(message_of(b"plain text"), "plain text");
        assert_eq!(
            quoted(&"x".repeat(500)).chars().count(),
            MAX_QUOTED_CHARS + 1
        );
    }

    #[test]
    fn base_urls_must_be_http() {
        assert!(
            OpenAiEngine::new(OpenAiEngineConfig::new("http://localhost:8000/v1/", "m")).is_ok()
        );
        let err = OpenAiEngine::new(OpenAiEngineConfig::new("localhost:8000", "m")).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { field, .. } if field == "base_url"));
    }
}
