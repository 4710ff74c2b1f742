//! The memory of password hashing goes back to the operating system: after
//! a burst of argon2id verifications on several threads at once, the
//! process is about as large as before it, with no allocator setting.
//!
//! A test binary of its own, so that no other test's allocations move the
//! figures it reads from `/proc/self/status`; its two tests take turns.

#![cfg(target_os = "linux")]

use std::sync::Mutex;
use std::time::Duration;

use switchboard_core::identity::password::{self, Verified};

/// Held by each test, so that one's burst does not move the other's figures.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One argon2id buffer is 19 MiB; what a test may keep is well under one.
const MARGIN_KIB: u64 = 8 * 1024;

/// The process's resident memory (`VmRSS`), in KiB.
fn resident_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

#[test]
fn memory_of_a_burst_of_verifications_goes_back_to_the_system() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let stored = password::hash_password("the right password").unwrap();
    // One verification first: whatever it sets up once (and glibc's malloc
    // raising its mmap threshold on the first 19 MiB block freed) is in the
    // figure before the burst.
    assert_eq!(
        password::verify_password("a wrong password", &stored),
        Ok(Verified::Mismatch)
    );
    let before = resident_kib();
    // Four threads at once, three verifications each: 19 MiB apiece while
    // they run, as a server's blocking threads do under a burst of sign-ins.
    std::thread::scope(|scope| {
        for thread in 0..4 {
            let stored = &stored;
            scope.spawn(move || {
                for attempt in 0..3 {
                    let wrong = format!("wrong password {thread}.{attempt}");
                    assert_eq!(
                        password::verify_password(&wrong, stored),
                        Ok(Verified::Mismatch)
                    );
                }
            });
        }
    });
    let after = resident_kib();
    assert!(
        after <= before + MARGIN_KIB,
        "resident memory grew from {before} KiB to {after} KiB over the burst and stayed"
    );
}

#[test]
fn memory_of_a_burst_of_sign_in_work_goes_back_to_the_system_soon_after() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let stored = password::hash_password("the right password").unwrap();
        let first = stored.clone();
        password::run_in_slot(move || password::verify_password("a wrong password", &first))
            .await
            .unwrap()
            .unwrap();
        // Past the time buffers are kept for after the last computation.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = resident_kib();
        // Forty at once, as a burst of failed sign-ins reaches the server:
        // known accounts with wrong passwords and unknown emails.
        let attempts: Vec<_> = (0..40)
            .map(|i| {
                let stored = stored.clone();
                tokio::spawn(password::run_in_slot(move || {
                    let wrong = format!("wrong password {i}");
                    if i % 4 == 0 {
                        password::verify_password(&wrong, &stored).ok()
                    } else {
                        password::burn_verification_time(&wrong);
                        Some(Verified::Mismatch)
                    }
                }))
            })
            .collect();
        for attempt in attempts {
            assert_eq!(attempt.await.unwrap().unwrap(), Some(Verified::Mismatch));
        }
        // The buffers kept for the next sign-in go after a short while;
        // the wait is generous, as this is about whether, not how fast.
        let mut after = resident_kib();
        for _ in 0..50 {
            if after <= before + MARGIN_KIB {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = resident_kib();
        }
        assert!(
            after <= before + MARGIN_KIB,
            "resident memory grew from {before} KiB to {after} KiB over the burst and stayed"
        );
    });
}
