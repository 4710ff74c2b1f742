//! A database that cannot store what it is given: a full SQLite file (its
//! size cap, `database_sqlite_max_bytes`, standing in for a full disk), a
//! PostgreSQL COMMIT that fails, and a damaged SQLite file at start-up.
//!
//! What must hold: a write answers success only after its commit, and then
//! its rows survive a restart; a failed write leaves nothing behind; writes
//! work again as soon as there is room, on every pooled connection;
//! readiness says "not writable" while the database is full; a damaged file
//! stops the start with a message that says so. Beside them, the
//! PostgreSQL connections kept for single statements (`db::kept`): used
//! again only after a clean statement, never more than half the pool.

use std::collections::HashSet;
use std::time::Duration;

use switchboard_core::Error;
use switchboard_core::chat::Chat;
use switchboard_core::db::Database;
use switchboard_core::db::kept::Kept;
use switchboard_core::identity::Role;
use switchboard_core::on_database;

use crate::support::{TestApp, TestDb};

/// Every write of a chat turn and of an account, in a loop until the
/// database refuses one: returns the error and the ids of the conversations
/// whose creation answered success.
async fn fill(app: &TestApp) -> (Error, Vec<String>) {
    let mut acknowledged = Vec::new();
    let identity = app.services.as_ref().unwrap().identity();
    let big = "x".repeat(15_000);
    for round in 0..10_000 {
        let conversation = match app
            .chat
            .create_conversation(&app.me, &format!("c{round}"))
            .await
        {
            Ok(conversation) => conversation,
            Err(err) => return (err, acknowledged),
        };
        acknowledged.push(conversation.id.clone());
        if let Err(err) = app.chat.send_message(&app.me, &conversation.id, &big).await {
            return (err, acknowledged);
        }
        let email = format!("user{round}@example.com");
        if let Err(err) = identity
            .create_user(&email, "a long pass phrase", Role::User)
            .await
        {
            return (err, acknowledged);
        }
    }
    panic!("the database never filled up");
}

/// The ids of every conversation of `app.me` as stored, read through a new
/// connection pool (as after a restart).
async fn stored_conversation_ids(test_db: &TestDb) -> HashSet<String> {
    let db = Database::connect(&test_db.config).await.expect("reconnect");
    let ids: Vec<String> = on_database!(&db, pool => {
        sqlx::query_scalar("SELECT id FROM conversations").fetch_all(pool).await.unwrap()
    });
    db.close().await;
    ids.into_iter().collect()
}

/// The pages the SQLite database has now.
async fn page_count(db: &Database) -> u64 {
    let pages: i64 = on_database!(db, pool => {
        sqlx::query_scalar("PRAGMA page_count").fetch_one(pool).await.unwrap()
    });
    u64::try_from(pages).unwrap()
}

/// Writes through every connection of the pool: more writes than
/// connections, some of them at once.
async fn writes_succeed(chat: &Chat, app: &TestApp, rounds: usize) -> Vec<String> {
    let mut ids = Vec::new();
    for round in 0..rounds {
        let (title_a, title_b) = (format!("after {round} a"), format!("after {round} b"));
        let (a, b) = tokio::join!(
            chat.create_conversation(&app.me, &title_a),
            chat.create_conversation(&app.me, &title_b),
        );
        for created in [a, b] {
            let conversation = created.expect("a write once there is room again");
            let sent = chat
                .send_message(&app.me, &conversation.id, "hello again")
                .await
                .expect("a turn once there is room again");
            assert_eq!(sent.message.content, "hello again");
            ids.push(conversation.id);
        }
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_sqlite_database_loses_no_acknowledged_write_and_recovers_by_itself() {
    let test_db = TestDb::sqlite().await;
    let config = test_db.config.clone();
    let mut app = TestApp::start_configured(test_db, |config| {
        config.database_sqlite_max_bytes = Some(1 << 30);
    })
    .await;
    let services = app.services.as_ref().unwrap();
    services.ready().await.expect("ready at first");

    // The disk fills up: no room beyond what the file has now.
    let full_at = page_count(&app.db).await * 4096;
    app.db.set_sqlite_max_bytes(full_at).unwrap();
    let (refused, acknowledged) = fill(&app).await;
    assert!(
        matches!(&refused, Error::Unavailable(message) if message.contains("full")),
        "a write to a full database is refused as UNAVAILABLE, saying why: {refused:?}"
    );
    let not_ready = services.ready().await.expect_err("not ready while full");
    assert!(
        not_ready.to_string().contains("not writable"),
        "readiness says why: {not_ready}"
    );
    // Space is freed: writes work at once, on every connection, and
    // readiness says so.
    app.db.set_sqlite_max_bytes(1 << 30).unwrap();
    services
        .ready()
        .await
        .expect("ready again once there is room");
    let after = writes_succeed(&app.chat, &app, 6).await;

    app.shutdown().await;
    let stored = stored_conversation_ids(&TestDb::reopen(config)).await;
    for id in acknowledged.iter().chain(&after) {
        assert!(
            stored.contains(id),
            "conversation {id} was acknowledged but is not stored"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgresql_commit_that_fails_stores_nothing_and_poisons_no_connection() {
    let test_db = TestDb::postgres().await;
    let config = test_db.config.clone();
    let app = TestApp::start(test_db).await;
    let conversation = app.chat.create_conversation(&app.me, "kept").await.unwrap();
    // A constraint checked at COMMIT that refuses as a full disk would.
    on_database!(&app.db, pool => {
        sqlx::raw_sql(
            "CREATE FUNCTION refuse_at_commit() RETURNS trigger AS $$ BEGIN \
               RAISE EXCEPTION 'could not extend file' USING ERRCODE = '53100'; \
             END $$ LANGUAGE plpgsql; \
             CREATE CONSTRAINT TRIGGER refuse_at_commit AFTER INSERT ON messages \
               DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_at_commit();",
        )
        .execute(pool)
        .await
        .map(drop)
        .unwrap()
    });
    for _ in 0..12 {
        let refused = app
            .chat
            .send_message(&app.me, &conversation.id, "lost?")
            .await
            .expect_err("a turn whose COMMIT fails is refused");
        assert!(
            matches!(&refused, Error::Unavailable(message) if message.contains("full")),
            "{refused:?}"
        );
    }
    let messages = app
        .chat
        .list_messages(&app.me, &conversation.id, 100, "")
        .await
        .unwrap()
        .items;
    assert!(
        messages.is_empty(),
        "nothing of a failed turn is stored: {messages:?}"
    );

    on_database!(&app.db, pool => {
        sqlx::raw_sql("DROP TRIGGER refuse_at_commit ON messages")
            .execute(pool)
            .await
            .map(drop)
            .unwrap()
    });
    let after = writes_succeed(&app.chat, &app, 6).await;
    let stored = stored_conversation_ids(&TestDb::reopen(config)).await;
    for id in after.iter().chain([&conversation.id]) {
        assert!(stored.contains(id), "conversation {id} is stored");
    }
}

/// Asserts that a connection taken from `kept` answers a statement, and
/// gives it back clean.
async fn a_kept_connection_works(kept: &Kept) {
    let mut conn = kept.take().await.unwrap();
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(one, 1);
    conn.keep();
}

/// Asserts that a transaction on `db` gets a connection and commits within
/// 5 s (the pool is not starved), `context` saying where.
async fn a_transaction_commits(db: &Database, context: &str) {
    tokio::time::timeout(Duration::from_secs(5), async {
        let tx = db.begin().await.expect("a transaction gets a connection");
        tx.commit().await.expect("commits");
    })
    .await
    .unwrap_or_else(|_| panic!("the pool is starved {context}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_postgresql_connections_are_reused_and_never_starve_the_pool() {
    let test_db = TestDb::postgres().await;
    let db = test_db.connect().await;
    let kept = db.kept().expect("PostgreSQL keeps connections");
    let backend = "SELECT pg_backend_pid()";

    let mut conn = kept.take().await.unwrap();
    let first: i32 = sqlx::query_scalar(backend)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    conn.keep();
    let mut conn = kept.take().await.unwrap();
    let again: i32 = sqlx::query_scalar(backend)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(first, again, "a connection given back clean is used again");
    // A failed statement: the connection goes back to the pool, tested,
    // and the next one works.
    let failed = sqlx::query("SELECT 1 / 0").execute(&mut *conn).await;
    assert!(failed.is_err());
    drop(conn);
    a_kept_connection_works(kept).await;

    // Every connection of the pool taken and given back clean: only half
    // are kept, and the pool still serves everything else.
    let size = test_db.config.database_max_connections as usize;
    let taken = futures::future::join_all((0..size).map(|_| kept.take())).await;
    for conn in taken {
        conn.expect("the pool has a connection for each").keep();
    }
    a_transaction_commits(&db, "beside the kept connections").await;
    // Closing gives the kept ones back, or the pool's close would wait,
    // and also the one still in use when the close began.
    let in_use = kept.take().await.unwrap();
    let closing = tokio::spawn({
        let db = db.clone();
        async move { db.close().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    in_use.keep();
    tokio::time::timeout(Duration::from_secs(5), closing)
        .await
        .expect("the database closes")
        .unwrap();

    // A pool of one keeps nothing: its only connection stays the pool's.
    let config = switchboard_core::config::Config {
        database_max_connections: 1,
        ..test_db.config.clone()
    };
    let single = Database::connect(&config).await.expect("connect");
    let kept = single.kept().expect("PostgreSQL keeps connections");
    a_kept_connection_works(kept).await;
    a_transaction_commits(&single, "in a pool of one").await;
    single.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sqlite_file_stops_the_start_with_a_clear_message() {
    let test_db = TestDb::sqlite().await;
    {
        let app = TestApp::start(TestDb::reopen(test_db.config.clone())).await;
        for i in 0..200 {
            app.chat
                .create_conversation(&app.me, &format!("conversation {i} {}", "x".repeat(150)))
                .await
                .unwrap();
        }
        let mut app = app;
        app.shutdown().await;
    }
    let file = test_db.config.data_dir.join("switchboard.db");
    let mut bytes = std::fs::read(&file).unwrap();
    assert!(bytes.len() > 8 * 4096, "the file has pages to damage");
    // Garbage over pages 3 and 4 (b-tree pages), the header left intact.
    for byte in &mut bytes[2 * 4096..4 * 4096] {
        *byte = 0xa5;
    }
    std::fs::write(&file, &bytes).unwrap();
    let _ = std::fs::remove_file(file.with_extension("db-wal"));
    let _ = std::fs::remove_file(file.with_extension("db-shm"));

    let err = Database::connect(&test_db.config)
        .await
        .expect_err("a damaged file is refused");
    let message = err.to_string();
    assert!(
        message.contains("is damaged") && message.contains("switchboard.db"),
        "the message names the file and the damage: {message}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_and_database_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let test_db = TestDb::sqlite().await;
    let app = TestApp::start(TestDb::reopen(test_db.config.clone())).await;
    app.chat.create_conversation(&app.me, "x").await.unwrap();
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    let dir = &test_db.config.data_dir;
    assert_eq!(mode(dir), 0o700, "the data directory");
    for name in ["switchboard.db", "switchboard.db-wal", "switchboard.db-shm"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
}

/// The variable that tells this test binary it runs inside the private
/// mount namespace, and where the small disk is.
const SMALL_DISK: &str = "SWITCHBOARD_TEST_SMALL_DISK";

/// The data directory on an 8 MiB tmpfs of our own, filled by eight
/// writers at once until the disk refuses them all, then freed: what the
/// hostile probe did to the release binary. Mounting needs a mount
/// namespace, so the test runs itself again under `unshare` (as root, or
/// as any user where unprivileged user namespaces are allowed).
#[test]
fn a_full_disk_loses_no_acknowledged_write_and_recovers_by_itself() {
    if let Ok(dir) = std::env::var(SMALL_DISK) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(fill_a_small_disk(std::path::PathBuf::from(dir)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let test = "storage::a_full_disk_loses_no_acknowledged_write_and_recovers_by_itself";
    let script = format!(
        "mount -t tmpfs -o size=8m,mode=0700 tmpfs \"$1\" && {SMALL_DISK}=\"$1\" exec \"$0\" \
         --exact {test} --nocapture --test-threads 1"
    );
    let exe = std::env::current_exe().unwrap();
    let mut ran = None;
    for namespace in [&["--mount"][..], &["--user", "--map-root-user", "--mount"]] {
        let output = std::process::Command::new("unshare")
            .args(namespace)
            .args(["sh", "-c", &script])
            .arg(&exe)
            .arg(dir.path())
            .output()
            .expect("run unshare (util-linux)");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        if stdout.contains("running 1 test") {
            ran = Some((output.status, stdout, stderr));
            break;
        }
        eprintln!("unshare {namespace:?} could not mount a tmpfs: {stderr}");
    }
    let Some((status, stdout, stderr)) = ran else {
        panic!(
            "\n\n*** This test needs a private tmpfs: it runs `unshare --mount` (as root) or \
             `unshare --user --map-root-user --mount`, and neither could mount one here.\n\n"
        );
    };
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(status.success(), "the scenario on a small disk failed");
    assert!(stdout.contains("1 passed"), "the scenario ran and passed");
}

async fn fill_a_small_disk(disk: std::path::PathBuf) {
    // 2 MiB that the "operator" deletes once the disk is full.
    let ballast = disk.join("ballast");
    std::fs::write(&ballast, vec![1u8; 2 << 20]).unwrap();
    let mut test_db = TestDb::sqlite().await;
    test_db.config.data_dir = disk.join("data");
    let config = test_db.config.clone();
    let app = std::sync::Arc::new(TestApp::start(TestDb::reopen(config.clone())).await);
    let writers = (0..8).map(|writer| {
        let app = app.clone();
        tokio::spawn(async move {
            let (mut acknowledged, mut refusals) = (Vec::new(), Vec::new());
            let content = "y".repeat(15_000);
            while refusals.len() < 20 {
                let title = format!("writer {writer}");
                match app.chat.create_conversation(&app.me, &title).await {
                    Ok(conversation) => {
                        acknowledged.push(conversation.id.clone());
                        if let Err(err) = app
                            .chat
                            .send_message(&app.me, &conversation.id, &content)
                            .await
                        {
                            refusals.push(err);
                        }
                    }
                    Err(err) => refusals.push(err),
                }
            }
            (acknowledged, refusals)
        })
    });
    let mut acknowledged = Vec::new();
    for writer in writers.collect::<Vec<_>>() {
        let (ids, refusals) = writer.await.unwrap();
        acknowledged.extend(ids);
        for refused in refusals {
            assert!(
                matches!(&refused, Error::Unavailable(message) if message.contains("full")),
                "a write to a full disk is refused as UNAVAILABLE, saying why: {refused:?}"
            );
        }
    }
    let services = app.services.as_ref().unwrap();
    let not_ready = services
        .ready()
        .await
        .expect_err("not ready while the disk is full");
    assert!(
        not_ready.to_string().contains("not writable"),
        "{not_ready}"
    );

    std::fs::remove_file(&ballast).unwrap();
    services
        .ready()
        .await
        .expect("ready again once there is room");
    let after = writes_succeed(&app.chat, &app, 3).await;

    let stored = stored_conversation_ids(&TestDb::reopen(config)).await;
    let lost: Vec<&String> = acknowledged
        .iter()
        .chain(&after)
        .filter(|id| !stored.contains(*id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged conversations are not stored",
        lost.len(),
        acknowledged.len() + after.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_begin_leaves_no_connection_inside_a_transaction() {
    let test_db = TestDb::sqlite().await;
    let db = test_db.connect().await;
    // One transaction holds the write lock; the BEGINs behind it wait on
    // SQLite's busy timeout and are given up (a deadline, a client gone).
    let holder = db.begin().await.unwrap();
    for _ in 0..3 {
        let gave_up = tokio::time::timeout(Duration::from_millis(100), db.begin()).await;
        assert!(gave_up.is_err(), "the BEGIN waits for the lock");
    }
    holder.rollback().await.unwrap();
    // The late BEGINs now succeed inside the driver, and are rolled back.
    tokio::time::sleep(Duration::from_millis(500)).await;

    for i in 0..20 {
        on_database!(&db, pool => {
            sqlx::query("INSERT INTO storage_probe (filler) VALUES ($1)")
                .bind(vec![i as u8])
                .execute(pool)
                .await
                .map(drop)
                .expect("a write after the cancelled BEGINs")
        });
    }
    db.close().await;
    let reopened = Database::connect(&test_db.config).await.unwrap();
    let stored: i64 = on_database!(&reopened, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM storage_probe").fetch_one(pool).await.unwrap()
    });
    assert_eq!(stored, 20, "every acknowledged write is stored");
}
