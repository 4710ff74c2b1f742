-- Conversations and their messages. Ids are UUID v7 strings; timestamps are
-- Unix microseconds. The SQLite and PostgreSQL sets are kept identical where
-- the dialects allow; never edit a migration once it has been applied.

CREATE TABLE conversations (
    id         TEXT PRIMARY KEY NOT NULL,
    owner_id   TEXT NOT NULL,
    title      TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- Listing a user's conversations, newest first, by keyset (created_at, id).
CREATE INDEX conversations_by_owner ON conversations (owner_id, created_at, id);

CREATE TABLE messages (
    id              TEXT PRIMARY KEY NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    role            TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT NOT NULL,
    status          TEXT NOT NULL
                    CHECK (status IN ('pending', 'streaming', 'complete', 'failed', 'cancelled')),
    -- For a finished reply: a JSON array of the byte lengths of the streamed
    -- pieces of `content`, so its events can be replayed with the same seqs.
    delta_lengths   TEXT,
    -- For a failed or cancelled reply: the gRPC code name and message of its
    -- final Error event.
    error_code      TEXT,
    error_message   TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);

-- Listing a conversation's messages, oldest first, by keyset (created_at, id).
CREATE INDEX messages_by_conversation ON messages (conversation_id, created_at, id);

-- Finding unfinished replies on start-up.
CREATE INDEX messages_unfinished ON messages (status) WHERE status IN ('pending', 'streaming');
