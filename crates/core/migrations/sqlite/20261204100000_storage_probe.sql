-- Where readiness checks that the database can still allocate pages: it
-- inserts a blob here and rolls back, so the table stays empty.
CREATE TABLE storage_probe (
    id INTEGER PRIMARY KEY,
    filler BLOB NOT NULL
);
