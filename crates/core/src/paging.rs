//! Keyset paging, shared by every listing (conversations, messages, users,
//! audit events, dead letters) and its [`Page`] of results. A page token is an opaque, URL-safe string: base64 of the
//! (created_at, id) of the last item on the previous page, tagged with the
//! listing it belongs to. Keysets stay correct while rows are added, unlike
//! offsets.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T> {
    /// The items on this page.
    pub items: Vec<T>,
    /// The token of the next page; `None` on the last page.
    pub next_page_token: Option<String>,
}

/// Conversations per page when the request asks for 0.
pub const DEFAULT_CONVERSATION_PAGE_SIZE: u32 = 50;

/// Messages per page when the request asks for 0.
pub const DEFAULT_MESSAGE_PAGE_SIZE: u32 = 100;

/// The largest page; larger requests get this many.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Which listing a token was issued by, so a token is not accepted by
/// another listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Listing {
    Conversations,
    Messages,
    Users,
    DeadLetters,
}

/// The position after which the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    pub(crate) created_at: i64,
    pub(crate) id: String,
}

impl Listing {
    fn tag(self) -> &'static str {
        match self {
            Self::Conversations => "c1",
            Self::Messages => "m1",
            Self::Users => "u1",
            Self::DeadLetters => "d1",
        }
    }
}

/// The page size to use: `requested`, or `default` for 0, at most
/// [`MAX_PAGE_SIZE`].
pub(crate) fn page_size(requested: u32, default: u32) -> u32 {
    match requested {
        0 => default,
        n => n.min(MAX_PAGE_SIZE),
    }
}

pub(crate) fn encode(listing: Listing, cursor: &Cursor) -> String {
    let raw = format!("{}|{}|{}", listing.tag(), cursor.created_at, cursor.id);
    URL_SAFE_NO_PAD.encode(raw)
}

/// Decodes a page token of `listing`; an empty token is the first page.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming `page_token` if the token was not
/// issued by this listing.
pub(crate) fn decode(listing: Listing, token: &str) -> Result<Option<Cursor>> {
    if token.is_empty() {
        return Ok(None);
    }
    let malformed = || Error::invalid_argument("page_token", "not a page token of this listing");
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| malformed())?;
    let raw = String::from_utf8(raw).map_err(|_| malformed())?;
    let mut parts = raw.splitn(3, '|');
    let (Some(tag), Some(created_at), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(malformed());
    };
    if tag != listing.tag() || uuid::Uuid::try_parse(id).is_err() {
        return Err(malformed());
    }
    let created_at = created_at.parse().map_err(|_| malformed())?;
    Ok(Some(Cursor {
        created_at,
        id: id.to_owned(),
    }))
}

/// Cuts `items` (fetched with one extra row) to `size`, with a token for
/// the next page if the extra row came back.
pub(crate) fn page<T>(
    mut items: Vec<T>,
    size: u32,
    listing: Listing,
    cursor: impl Fn(&T) -> Cursor,
) -> Page<T> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let more = items.len() > size;
    items.truncate(size);
    let next_page_token = match items.last() {
        Some(last) if more => Some(encode(listing, &cursor(last))),
        _ => None,
    };
    Page {
        items,
        next_page_token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_stay_in_their_listing() {
        let cursor = Cursor {
            created_at: 1_700_000_000_000_000,
            id: "01a229b8-41c2-7291-af9c-f242ae29f1d6".into(),
        };
        let token = encode(Listing::Messages, &cursor);
        assert_eq!(decode(Listing::Messages, &token).unwrap(), Some(cursor));
        assert!(decode(Listing::Conversations, &token).is_err());
        assert!(decode(Listing::Messages, "%%%").is_err());
        assert_eq!(decode(Listing::Messages, "").unwrap(), None);
        // A forged cursor whose id is not an id (a NUL, say) is refused
        // before it reaches SQL.
        let forged = encode(
            Listing::Messages,
            &Cursor {
                created_at: 0,
                id: "a\0b".into(),
            },
        );
        assert!(decode(Listing::Messages, &forged).is_err());
    }

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0, 50), 50);
        assert_eq!(page_size(7, 50), 7);
        assert_eq!(page_size(5000, 50), MAX_PAGE_SIZE);
    }
}
