//! Read caches in front of the database for what every signed-in request
//! reads: who presents a credential ([`Identity::authenticate`]) and the
//! conversation a read names ([`Chat::get_conversation`]).
//!
//! The rule is that a cache may only be a moment behind the database, and
//! never behind a change this process made:
//!
//! * **Every write invalidates.** The domain method that changes what an
//!   entry says (a logout, a disabled account, a revoked key, a renamed or
//!   deleted conversation, a new message) calls [`Caches::invalidate`] once
//!   its transaction has committed, before it answers: on the instance
//!   that made the change it takes effect at once.
//! * **Other instances hear it through an [`InvalidationBus`]** (Redis
//!   Pub/Sub, `switchboard-redis`), within the message's delivery. While
//!   the bus's subscription is down ([`Caches::set_live`]), nothing is
//!   served from the caches at all.
//! * **Every entry lives at most [`ENTRY_TTL`]**, counted from the start of
//!   the read that filled it: the bound when a message is lost, or when
//!   instances share a database without Redis.
//! * **A read that raced a write is not stored.** A reader takes a
//!   [`Ticket`] before it queries; an invalidation in the meantime bumps
//!   the cache's generation and the result is answered but not kept.
//!
//! Only positive answers are cached (a refused credential, a missing
//! conversation are asked again each time), so a cache can never refuse
//! what the database would accept.
//!
//! [`Identity::authenticate`]: crate::identity::Identity::authenticate
//! [`Chat::get_conversation`]: crate::chat::Chat::get_conversation

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::chat::Conversation;
use crate::identity::Principal;

/// How long a cached entry is believed at most, counted from the start of
/// the read that filled it: the bound on how late another instance sees a
/// change whose invalidation message was lost.
pub const ENTRY_TTL: Duration = Duration::from_secs(1);

/// How many entries one cache holds at most; a full cache drops what has
/// expired, and everything if that is not enough.
const CAPACITY: usize = 10_000;

/// What changed, as every instance's caches must hear it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Invalidation {
    /// An account changed (a session ended, the account was disabled,
    /// changed or deleted, a key was revoked, its second factor changed):
    /// every credential of the account, and the conversations it owns.
    Account {
        /// The account's user id.
        user_id: String,
    },
    /// A conversation changed or was deleted.
    Conversation {
        /// The conversation's id.
        id: String,
    },
    /// Any number of conversations went (the retention task).
    AllConversations,
    /// Any number of sessions went (the purge of expired ones).
    AllCredentials,
}

/// Carries [`Invalidation`]s to the other instances.
pub trait InvalidationBus: Send + Sync + std::fmt::Debug {
    /// Sends `invalidation` to every other instance. It does not wait: a
    /// message that is lost is bounded by [`ENTRY_TTL`].
    fn publish(&self, invalidation: &Invalidation);
}

/// Taken before a read that may fill a cache; see [`ReadCache::insert`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    generation: u64,
    started: Instant,
}

struct Entry<V> {
    value: V,
    until: Instant,
}

struct CacheState<V> {
    entries: HashMap<String, Entry<V>>,
    /// Bumped by every invalidation: a read that started before it does
    /// not store its answer.
    generation: u64,
}

/// One cache: string keys, values that expire, a generation that makes
/// invalidations win over reads in flight.
pub struct ReadCache<V> {
    state: Mutex<CacheState<V>>,
}

impl<V> std::fmt::Debug for ReadCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys: some are credentials.
        f.debug_struct("ReadCache")
            .field("entries", &self.lock().entries.len())
            .finish_non_exhaustive()
    }
}

impl<V> Default for ReadCache<V> {
    fn default() -> Self {
        Self {
            state: Mutex::new(CacheState {
                entries: HashMap::new(),
                generation: 0,
            }),
        }
    }
}

impl<V> ReadCache<V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, CacheState<V>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<V: Clone> ReadCache<V> {
    /// The value stored under `key`, if it has not expired.
    pub fn get(&self, key: &str) -> Option<V> {
        let state = self.lock();
        let entry = state.entries.get(key)?;
        (entry.until > Instant::now()).then(|| entry.value.clone())
    }

    /// A ticket for a read about to start.
    pub fn ticket(&self) -> Ticket {
        Ticket {
            generation: self.lock().generation,
            started: Instant::now(),
        }
    }

    /// Stores what the read of `ticket` found, unless an invalidation came
    /// since the ticket was taken. It lives [`ENTRY_TTL`] from the read's
    /// start, or until `expires` if that is sooner (an access token's
    /// expiry, a session's end).
    pub fn insert(&self, ticket: Ticket, key: &str, value: V, expires: Option<Instant>) {
        let until = ticket.started + ENTRY_TTL;
        let until = expires.map_or(until, |expires| expires.min(until));
        let now = Instant::now();
        if until <= now {
            return;
        }
        let mut state = self.lock();
        if state.generation != ticket.generation {
            return;
        }
        if state.entries.len() >= CAPACITY && !state.entries.contains_key(key) {
            state.entries.retain(|_, entry| entry.until > now);
            if state.entries.len() >= CAPACITY {
                state.entries.clear();
            }
        }
        state.entries.insert(key.to_owned(), Entry { value, until });
    }

    /// Drops the entry of `key`.
    pub fn remove(&self, key: &str) {
        let mut state = self.lock();
        state.generation += 1;
        state.entries.remove(key);
    }

    /// Drops every entry `drop` says to.
    pub fn remove_where(&self, drop: impl Fn(&V) -> bool) {
        let mut state = self.lock();
        state.generation += 1;
        state.entries.retain(|_, entry| !drop(&entry.value));
    }

    /// Drops every entry.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.generation += 1;
        state.entries.clear();
    }

    /// How many entries are held (expired ones included).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The caches of one instance, and the bus that tells the others.
#[derive(Debug)]
pub struct Caches {
    /// Credential → who presents it.
    credentials: ReadCache<Principal>,
    /// Conversation id → the stored conversation (its owner included).
    conversations: ReadCache<Conversation>,
    bus: OnceLock<Arc<dyn InvalidationBus>>,
    /// Whether the caches may be used: false while a bus is set up but its
    /// subscription is down, so a missed message cannot be believed.
    live: AtomicBool,
}

impl Default for Caches {
    fn default() -> Self {
        Self::new()
    }
}

impl Caches {
    /// Empty caches for one instance, in use, with no bus.
    pub fn new() -> Self {
        Self {
            credentials: ReadCache::default(),
            conversations: ReadCache::default(),
            bus: OnceLock::new(),
            live: AtomicBool::new(true),
        }
    }

    /// Sends this instance's invalidations to the others through `bus`.
    /// Set once; a second bus is ignored.
    pub fn share_through(&self, bus: Arc<dyn InvalidationBus>) {
        if self.bus.set(bus).is_err() {
            tracing::warn!("the caches already have an invalidation bus; ignoring another");
        }
    }

    /// Whether the caches may be used. A bus calls it with `false` when its
    /// subscription is lost (everything is dropped, and nothing is read or
    /// stored until it comes back) and with `true` once it is subscribed.
    pub fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::SeqCst);
            self.clear();
        } else {
            self.clear();
            self.live.store(true, Ordering::SeqCst);
        }
    }

    fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// The credentials cache, while the caches may be used.
    pub fn credentials(&self) -> Option<&ReadCache<Principal>> {
        self.is_live().then_some(&self.credentials)
    }

    /// The conversations cache, while the caches may be used.
    pub fn conversations(&self) -> Option<&ReadCache<Conversation>> {
        self.is_live().then_some(&self.conversations)
    }

    /// Applies `invalidation` here and sends it to every other instance.
    pub fn invalidate(&self, invalidation: Invalidation) {
        self.apply(&invalidation);
        if let Some(bus) = self.bus.get() {
            bus.publish(&invalidation);
        }
    }

    /// Applies `invalidation` here only (one another instance sent).
    pub fn apply(&self, invalidation: &Invalidation) {
        match invalidation {
            Invalidation::Account { user_id } => {
                self.credentials
                    .remove_where(|principal| principal.user_id == *user_id);
                self.conversations
                    .remove_where(|conversation| conversation.owner_id == *user_id);
            }
            Invalidation::Conversation { id } => self.conversations.remove(id),
            Invalidation::AllConversations => self.conversations.clear(),
            Invalidation::AllCredentials => self.credentials.clear(),
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.credentials.clear();
        self.conversations.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn conversation(id: &str, owner: &str) -> Conversation {
        Conversation {
            id: id.to_owned(),
            owner_id: owner.to_owned(),
            title: "t".to_owned(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn a_read_that_raced_an_invalidation_is_not_stored() {
        let cache = ReadCache::default();
        let ticket = cache.ticket();
        cache.remove("c1");
        cache.insert(ticket, "c1", conversation("c1", "u"), None);
        assert!(cache.get("c1").is_none());
        // A read that started after the invalidation is stored.
        let ticket = cache.ticket();
        cache.insert(ticket, "c1", conversation("c1", "u"), None);
        assert_eq!(cache.get("c1").map(|c| c.id), Some("c1".to_owned()));
    }

    #[test]
    fn an_entry_past_its_expiry_is_not_served() {
        let cache = ReadCache::default();
        let ticket = cache.ticket();
        cache.insert(ticket, "c1", conversation("c1", "u"), Some(Instant::now()));
        assert!(cache.get("c1").is_none());
    }

    #[test]
    fn an_account_invalidation_drops_its_credentials_and_conversations_only() {
        let caches = Caches::new();
        let credentials = caches.credentials().unwrap();
        credentials.insert(credentials.ticket(), "k1", Principal::user("a"), None);
        credentials.insert(credentials.ticket(), "k2", Principal::user("b"), None);
        let conversations = caches.conversations().unwrap();
        conversations.insert(conversations.ticket(), "c1", conversation("c1", "a"), None);
        conversations.insert(conversations.ticket(), "c2", conversation("c2", "b"), None);
        caches.invalidate(Invalidation::Account {
            user_id: "a".to_owned(),
        });
        assert!(credentials.get("k1").is_none());
        assert!(credentials.get("k2").is_some());
        assert!(conversations.get("c1").is_none());
        assert!(conversations.get("c2").is_some());
    }

    #[test]
    fn caches_that_are_not_live_are_not_used() {
        let caches = Caches::new();
        let credentials = caches.credentials().unwrap();
        credentials.insert(credentials.ticket(), "k1", Principal::user("a"), None);
        caches.set_live(false);
        assert!(caches.credentials().is_none());
        caches.set_live(true);
        assert!(caches.credentials().unwrap().get("k1").is_none());
    }

    #[test]
    fn invalidations_read_back_from_their_wire_form() {
        let all = [
            Invalidation::Account {
                user_id: "u".to_owned(),
            },
            Invalidation::Conversation { id: "c".to_owned() },
            Invalidation::AllConversations,
            Invalidation::AllCredentials,
        ];
        for invalidation in all {
            let json = serde_json::to_string(&invalidation).unwrap();
            assert_eq!(
                serde_json::from_str::<Invalidation>(&json).unwrap(),
                invalidation
            );
        }
    }
}
