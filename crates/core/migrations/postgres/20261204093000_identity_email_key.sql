-- The normalised form of each account's email (Unicode NFKC, case folded,
-- without the domain's trailing dot; `identity/email.rs`), which
-- registration and sign-in compare, so one address is one account however
-- it is written. The unique index keeps it so.
--
-- SQL cannot compute NFKC, so rows written before this column start with
-- NULL, and the server fills them in when it starts (`Identity::start`).
-- An older account whose key is taken by another (two variants of one
-- address registered before this change) keeps NULL, cannot sign in with
-- a password until an administrator resolves it, and is logged.
ALTER TABLE users ADD COLUMN email_key TEXT;

CREATE UNIQUE INDEX users_by_email_key ON users (email_key);
