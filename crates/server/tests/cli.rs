//! The administrative commands of the `switchboard` binary, run as an
//! operator would: `user create` (password from the environment only),
//! `audit verify` on an intact and on a hand-edited trail, `keys rotate`.
//! Each test gets its own SQLite data directory.

use std::process::{Command, Output, Stdio};

use sqlx::Connection as _;

/// Runs the binary with `args` against `data_dir`, stdin closed, and the
/// given extra environment.
fn switchboard(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("SWITCHBOARD_USER_PASSWORD")
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env("SWITCHBOARD_LOG_LEVEL", "warn")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("the binary runs")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const PASSWORD: (&str, &str) = ("SWITCHBOARD_USER_PASSWORD", "correct horse battery staple");

#[test]
fn the_first_admin_is_created_from_the_environment_and_only_once() {
    let dir = tempfile::tempdir().unwrap();
    let created = switchboard(
        dir.path(),
        &[
            "user",
            "create",
            "--email",
            "Admin@Example.test",
            "--role",
            "admin",
        ],
        &[PASSWORD],
    );
    assert!(created.status.success(), "{}", text(&created));
    assert!(text(&created).contains("created admin@example.test"));
    assert!(text(&created).contains("with role admin"));

    let again = switchboard(
        dir.path(),
        &["user", "create", "--email", "admin@example.test"],
        &[PASSWORD],
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("exists"), "{}", text(&again));
}

#[test]
fn user_create_refuses_weak_missing_or_argument_passwords() {
    let dir = tempfile::tempdir().unwrap();
    let weak = switchboard(
        dir.path(),
        &["user", "create", "--email", "a@example.test"],
        &[("SWITCHBOARD_USER_PASSWORD", "short")],
    );
    assert!(!weak.status.success());
    assert!(text(&weak).contains("password"), "{}", text(&weak));

    // No variable and no terminal to ask at: a clear refusal, not a hang.
    let missing = switchboard(
        dir.path(),
        &["user", "create", "--email", "a@example.test"],
        &[],
    );
    assert!(!missing.status.success());
    assert!(
        text(&missing).contains("SWITCHBOARD_USER_PASSWORD"),
        "{}",
        text(&missing)
    );

    // There is no flag that takes a password (it would show in `ps`).
    let flag = switchboard(
        dir.path(),
        &[
            "user",
            "create",
            "--email",
            "a@example.test",
            "--password",
            "x",
        ],
        &[PASSWORD],
    );
    assert!(!flag.status.success());
    assert!(
        text(&flag).contains("unexpected argument"),
        "{}",
        text(&flag)
    );
}

#[test]
fn audit_verify_finds_a_hand_edited_event() {
    let dir = tempfile::tempdir().unwrap();
    for email in ["a@example.test", "b@example.test"] {
        let created = switchboard(
            dir.path(),
            &["user", "create", "--email", email],
            &[PASSWORD],
        );
        assert!(created.status.success(), "{}", text(&created));
    }
    let intact = switchboard(dir.path(), &["audit", "verify"], &[]);
    assert!(intact.status.success(), "{}", text(&intact));
    assert!(
        text(&intact).contains("audit trail intact: 2 events"),
        "{}",
        text(&intact)
    );

    // Someone with write access to the database file edits the first event,
    // getting past the trigger that refuses updates.
    let url = format!("sqlite:{}", dir.path().join("switchboard.db").display());
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("DROP TRIGGER audit_events_no_update")
            .execute(&mut db)
            .await
            .unwrap();
        sqlx::query("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 1")
            .execute(&mut db)
            .await
            .unwrap();
        db.close().await.unwrap();
    });
    let broken = switchboard(dir.path(), &["audit", "verify"], &[]);
    assert_eq!(broken.status.code(), Some(1), "{}", text(&broken));
    assert!(text(&broken).contains("audit trail BROKEN"));
    assert!(
        text(&broken).contains("seq 1: its fields do not match its hash"),
        "{}",
        text(&broken)
    );
}

#[test]
fn keys_rotate_names_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = switchboard(dir.path(), &["keys", "rotate"], &[]);
    assert!(first.status.success(), "{}", text(&first));
    let second = switchboard(dir.path(), &["keys", "rotate"], &[]);
    let kid = |output: &Output| {
        text(output)
            .split_whitespace()
            .nth(3)
            .map(|kid| kid.trim_end_matches(';').to_owned())
            .unwrap_or_default()
    };
    assert!(
        text(&second).starts_with("new signing key "),
        "{}",
        text(&second)
    );
    assert_ne!(kid(&first), kid(&second));
}

#[test]
fn a_database_open_to_other_users_is_named_in_a_warning_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = switchboard(&data, &["migrate"], &[]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        !text(&first).contains("open to other users"),
        "{}",
        text(&first)
    );

    let file = data.join("switchboard.db");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let again = switchboard(&data, &["migrate"], &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(
        text(&again).contains("open to other users") && text(&again).contains("switchboard.db"),
        "{}",
        text(&again)
    );
}

#[test]
fn a_damaged_database_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let created = switchboard(&data, &["migrate"], &[]);
    assert!(created.status.success(), "{}", text(&created));
    let file = data.join("switchboard.db");
    let mut bytes = std::fs::read(&file).unwrap();
    // Garbage over every page but the first (the header stays readable).
    for byte in &mut bytes[4096..] {
        *byte = 0x5a;
    }
    std::fs::write(&file, &bytes).unwrap();

    let started = switchboard(&data, &["serve", "--listen", "127.0.0.1:0"], &[]);
    assert!(!started.status.success(), "{}", text(&started));
    assert!(
        text(&started).contains("is damaged") && text(&started).contains("backup"),
        "{}",
        text(&started)
    );
}
