-- Accounts, sessions, API keys, signing keys, OpenID Connect links and the
-- audit trail. Ids are UUID v7 strings; timestamps are Unix microseconds.
-- Never edit a migration once it has been applied.

CREATE TABLE users (
    id             TEXT PRIMARY KEY NOT NULL,
    email          TEXT NOT NULL UNIQUE,
    display_name   TEXT NOT NULL,
    role           TEXT NOT NULL CHECK (role IN ('user', 'operator', 'admin')),
    -- argon2id PHC string (bcrypt accepted, re-hashed on login); NULL for
    -- accounts that only sign in through an OpenID Connect provider.
    password_hash  TEXT,
    disabled       BOOLEAN NOT NULL DEFAULT FALSE,
    -- Base32 TOTP secret; set by EnrollTotp, in force once totp_enabled.
    totp_secret    TEXT,
    totp_enabled   BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last TOTP time step accepted, so a code is never used twice.
    totp_last_step BIGINT,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL,
    last_login_at  BIGINT
);

CREATE INDEX users_by_creation ON users (created_at, id);

-- One-time recovery codes of the second factor, stored as SHA-256 hashes.
CREATE TABLE recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- Accounts linked to an OpenID Connect provider, by (issuer, subject).
CREATE TABLE user_identities (
    issuer     TEXT NOT NULL,
    subject    TEXT NOT NULL,
    provider   TEXT NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);

CREATE INDEX user_identities_by_user ON user_identities (user_id);

-- A signed-in session: one chain (family) of refresh tokens. Revoking it
-- stops its refresh tokens and the access tokens that name it (`sid`).
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);

CREATE INDEX sessions_by_user ON sessions (user_id);

-- Refresh tokens, stored only as SHA-256 hashes. A token works once:
-- `used_at` is set when it is exchanged, and presenting it again revokes
-- its session.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT
);

CREATE INDEX refresh_tokens_by_session ON refresh_tokens (session_id);

-- API keys, stored only as SHA-256 hashes of their secret.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    prefix       TEXT NOT NULL,
    secret_hash  TEXT NOT NULL UNIQUE,
    -- Space-separated permissions the key is restricted to; empty: all of
    -- its owner's.
    permissions  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at   BIGINT,
    revoked_at   BIGINT
);

CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at);

-- Keys that sign access tokens. The newest unretired key signs; retired
-- keys stay published in the JWKS until the tokens they signed expire.
CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY NOT NULL,
    algorithm   TEXT NOT NULL,
    private_key TEXT NOT NULL,
    public_jwk  TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    retired_at  BIGINT
);

-- OpenID Connect sign-ins started and not yet completed, by `state`.
CREATE TABLE oidc_logins (
    state         TEXT PRIMARY KEY NOT NULL,
    provider      TEXT NOT NULL,
    nonce         TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    redirect_uri  TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

-- The audit trail. Each row's hash covers its fields and the previous row's
-- hash, so editing or deleting a row breaks the chain (`switchboard audit
-- verify`); audit_head holds the newest seq and hash, so cutting rows off
-- the end is seen too.
CREATE TABLE audit_events (
    seq            BIGINT PRIMARY KEY NOT NULL,
    at             BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    action         TEXT NOT NULL,
    target         TEXT NOT NULL,
    outcome        TEXT NOT NULL CHECK (outcome IN ('success', 'failure')),
    client_address TEXT NOT NULL,
    user_agent     TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    detail         TEXT NOT NULL,
    prev_hash      TEXT NOT NULL,
    hash           TEXT NOT NULL
);

CREATE INDEX audit_events_by_actor ON audit_events (actor, seq);
CREATE INDEX audit_events_by_action ON audit_events (action, seq);
CREATE INDEX audit_events_by_time ON audit_events (at);

CREATE TABLE audit_head (
    id   INTEGER PRIMARY KEY CHECK (id = 1),
    seq  BIGINT NOT NULL,
    hash TEXT NOT NULL
);

INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '');

-- Append-only: the database refuses to change or remove an audit row.
CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
