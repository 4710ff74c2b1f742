//! Password hashing, verification and the password policy.
//!
//! New hashes are argon2id with the OWASP parameters (19 MiB, two passes,
//! one lane) in PHC string form. Verification also accepts older argon2
//! hashes and bcrypt hashes imported from other systems, and tells the
//! caller when a successful match should be re-hashed with the current
//! parameters, so stored hashes upgrade themselves as users log in.
//!
//! [`burn_verification_time`] lets a login for an unknown email cost as much
//! as one for a known email, so response times do not reveal which emails
//! have accounts.
//!
//! Each argon2 computation takes tens of milliseconds of a core and 19 MiB
//! by design, so the process runs only [`hashing_slots`] of them at once
//! ([`run_in_slot`]: the others wait in line without a thread), with memory
//! that goes back to the operating system soon after the last one ends
//! (`slots.rs`), so a burst of sign-ins neither grows the process by 19 MiB
//! per request nor leaves it large afterwards.

mod slots;

use std::fmt;
use std::sync::LazyLock;

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::password_hash::try_generate_salt;
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};

use self::slots::ArgonMemory;
pub use self::slots::{hashing_slots, run_in_slot};

/// Argon2 memory cost of new hashes, in KiB (OWASP: 19 MiB).
const M_COST_KIB: u32 = 19_456;
/// Argon2 passes over memory of new hashes.
const T_COST: u32 = 2;
/// Argon2 lanes of new hashes.
const P_COST: u32 = 1;
/// Argon2 output length of new hashes, in bytes.
const OUTPUT_LEN: usize = 32;

// Limits on the parameters read from a stored hash. Verifying runs whatever
// the hash asks for, so a corrupted or hostile row such as `m=4294967295`
// would otherwise allocate gigabytes or run for hours on one login.
/// Largest argon2 memory cost accepted from a stored hash, in KiB (256 MiB).
const MAX_M_COST_KIB: u32 = 262_144;
/// Largest argon2 pass count accepted from a stored hash.
const MAX_T_COST: u32 = 16;
/// Largest argon2 lane count accepted from a stored hash.
const MAX_P_COST: u32 = 16;
/// Largest bcrypt cost accepted from a stored hash (2^16 rounds, seconds).
const MAX_BCRYPT_COST: u32 = 16;

/// What went wrong while hashing or verifying a password.
///
/// None of these says whether the password was right: a wrong password is
/// [`Verified::Mismatch`], not an error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    /// The stored hash is in no format this module knows (neither an argon2
    /// PHC string nor a `$2a$`/`$2b$`/`$2y$` bcrypt hash).
    #[error("stored password hash has an unrecognised format")]
    UnrecognisedHash,
    /// The stored hash has a known prefix but cannot be parsed, or asks for
    /// parameters outside the accepted range.
    #[error("stored password hash is malformed: {0}")]
    MalformedHash(String),
    /// Computing a new hash failed (random number generator, parameters or
    /// memory).
    #[error("password hashing failed: {0}")]
    Hashing(String),
    /// The password work given to [`run_in_slot`] panicked, or its slots
    /// are gone.
    #[error("password work did not finish: {0}")]
    Interrupted(String),
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verified {
    /// The password is right.
    Match {
        /// The stored hash uses an older algorithm or other parameters than
        /// [`hash_password`]; store `hash_password(password)` in its place.
        needs_rehash: bool,
    },
    /// The password is wrong.
    Mismatch,
}

/// The current parameters: argon2id, m=19456 KiB, t=2, p=1, 32 bytes.
fn current_params() -> Result<Params, PasswordError> {
    Params::new(M_COST_KIB, T_COST, P_COST, Some(OUTPUT_LEN))
        .map_err(|e| PasswordError::Hashing(e.to_string()))
}

/// Hashes `password` for storage: argon2id, m=19456 KiB, t=2, p=1, a random
/// 16-byte salt, as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$…`).
///
/// Blocks for tens of milliseconds: run it through [`run_in_slot`].
///
/// # Errors
///
/// [`PasswordError::Hashing`] if the system random number generator fails
/// or the memory cannot be had.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let failed = |e: &dyn fmt::Display| PasswordError::Hashing(e.to_string());
    let params = current_params()?;
    let salt = try_generate_salt().map_err(|e| failed(&e))?;
    let mut out = [0u8; OUTPUT_LEN];
    ArgonMemory::for_params(&params)?
        .hash_into(
            &Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone()),
            password.as_bytes(),
            &salt,
            &mut out,
        )
        .map_err(|e| failed(&e))?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| failed(&e))?,
        salt: Some(Salt::new(&salt).map_err(|e| failed(&e))?),
        hash: Some(Output::new(&out).map_err(|e| failed(&e))?),
    };
    Ok(hash.to_string())
}

/// Checks `password` against `stored`, an argon2 PHC string or a bcrypt
/// hash (`$2a$`, `$2b$`, `$2y$`).
///
/// A match reports `needs_rehash` when `stored` is bcrypt, argon2i or
/// argon2d, or argon2id with parameters other than the current ones.
///
/// Blocks for tens of milliseconds: run it through [`run_in_slot`].
///
/// # Errors
///
/// [`PasswordError::UnrecognisedHash`] when `stored` is in neither format;
/// [`PasswordError::MalformedHash`] when it has a known prefix but cannot be
/// parsed or asks for excessive parameters.
pub fn verify_password(password: &str, stored: &str) -> Result<Verified, PasswordError> {
    if stored.starts_with("$argon2") {
        verify_argon2(password, stored)
    } else if ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| stored.starts_with(prefix))
    {
        verify_bcrypt(password, stored)
    } else {
        Err(PasswordError::UnrecognisedHash)
    }
}

fn verify_argon2(password: &str, stored: &str) -> Result<Verified, PasswordError> {
    let malformed = |e: &dyn fmt::Display| PasswordError::MalformedHash(e.to_string());
    let hash = PasswordHash::new(stored).map_err(|e| malformed(&e))?;
    let algorithm = Algorithm::try_from(hash.algorithm.as_str()).map_err(|e| malformed(&e))?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).map_err(|e| malformed(&e))?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).map_err(|e| malformed(&e))?;
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return Err(PasswordError::MalformedHash(
            "missing salt or hash output".into(),
        ));
    };
    if params.m_cost() > MAX_M_COST_KIB
        || params.t_cost() > MAX_T_COST
        || params.p_cost() > MAX_P_COST
    {
        return Err(PasswordError::MalformedHash(format!(
            "parameters m={},t={},p={} exceed the accepted limits",
            params.m_cost(),
            params.t_cost(),
            params.p_cost()
        )));
    }

    // What argon2's own `PasswordVerifier` does, with memory of our own.
    let mut out = vec![0u8; expected.len()];
    ArgonMemory::for_params(&params)?
        .hash_into(
            &Argon2::new(algorithm, version, params.clone()),
            password.as_bytes(),
            salt,
            &mut out,
        )
        .map_err(|e| malformed(&e))?;
    // `Output`'s equality is constant-time.
    if Output::new(&out).map_err(|e| malformed(&e))? != *expected {
        return Ok(Verified::Mismatch);
    }
    let current = algorithm == Algorithm::Argon2id
        && version == Version::V0x13
        && params.m_cost() == M_COST_KIB
        && params.t_cost() == T_COST
        && params.p_cost() == P_COST
        && params.output_len() == Some(OUTPUT_LEN);
    Ok(Verified::Match {
        needs_rehash: !current,
    })
}

fn verify_bcrypt(password: &str, stored: &str) -> Result<Verified, PasswordError> {
    // `$2b$12$…`: the cost is the two digits after the prefix.
    let cost = stored
        .get(4..6)
        .and_then(|c| c.parse::<u32>().ok())
        .ok_or_else(|| PasswordError::MalformedHash("bcrypt cost is not a number".into()))?;
    if cost > MAX_BCRYPT_COST {
        return Err(PasswordError::MalformedHash(format!(
            "bcrypt cost {cost} exceeds the accepted limit"
        )));
    }
    // The truncating verifier, because that is how the other systems that
    // produced these hashes treated passwords longer than 72 bytes.
    match bcrypt::verify(password, stored) {
        Ok(true) => Ok(Verified::Match { needs_rehash: true }),
        Ok(false) => Ok(Verified::Mismatch),
        Err(e) => Err(PasswordError::MalformedHash(e.to_string())),
    }
}

/// An argon2id hash with the current parameters of a password nobody has,
/// computed on first use.
static DUMMY_HASH: LazyLock<Result<String, PasswordError>> =
    LazyLock::new(|| hash_password("switchboard dummy password for timing"));

/// Does the work of verifying `password` against an argon2id hash with the
/// current parameters and throws the result away.
///
/// Call it when a login names an unknown account, so the response takes as
/// long as a wrong password for a known one. The first call in a process
/// also computes the dummy hash it verifies against, and so takes twice as
/// long.
pub fn burn_verification_time(password: &str) {
    match DUMMY_HASH.as_ref() {
        Ok(dummy) => {
            std::hint::black_box(verify_password(password, dummy)).ok();
        }
        // Cannot happen short of a broken RNG; hashing costs the same.
        Err(_) => {
            std::hint::black_box(hash_password(password)).ok();
        }
    }
}

/// Passwords refused outright, compared case-insensitively: the most
/// common entries of public breach lists that are at least eight
/// characters long (shorter ones already fail the length rule).
const COMMON_PASSWORDS: &[&str] = &[
    "password",
    "password1",
    "password12",
    "password123",
    "password1234",
    "password12345",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "p@ssw0rd123",
    "12345678",
    "123456789",
    "1234567890",
    "12345678910",
    "123456789012",
    "1234567890123",
    "0123456789",
    "87654321",
    "987654321",
    "9876543210",
    "11223344",
    "123123123",
    "123321123",
    "147258369",
    "1q2w3e4r",
    "1q2w3e4r5t",
    "1q2w3e4r5t6y",
    "1qaz2wsx",
    "1qaz2wsx3edc",
    "zaq12wsx",
    "qwertyui",
    "qwertyuiop",
    "qwertyuiopas",
    "qwerty123",
    "qwerty1234",
    "qwerty123456",
    "asdfghjkl",
    "asdfghjkl123",
    "zxcvbnm123",
    "iloveyou",
    "iloveyou123",
    "sunshine",
    "princess",
    "football",
    "baseball",
    "superman",
    "starwars",
    "trustno1",
    "welcome1",
    "welcome123",
    "letmein123",
    "changeme",
    "changeme123",
    "administrator",
    "abc12345",
    "abcd1234",
    "abcdefgh",
    "abcdefghijkl",
];

/// The rules a new password must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    /// The fewest characters (Unicode scalar values) a password may have.
    pub min_len: usize,
    /// The most characters a password may have.
    pub max_len: usize,
}

impl Default for PasswordPolicy {
    /// At least 12 and at most 128 characters.
    fn default() -> Self {
        Self {
            min_len: 12,
            max_len: 128,
        }
    }
}

/// Why a password was refused; its `Display` text is meant for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyViolation {
    /// Fewer characters than the policy's minimum.
    #[error("password must be at least {min} characters")]
    TooShort {
        /// The policy's minimum.
        min: usize,
    },
    /// More characters than the policy's maximum.
    #[error("password must be at most {max} characters")]
    TooLong {
        /// The policy's maximum.
        max: usize,
    },
    /// One character repeated.
    #[error("password must not be a single repeated character")]
    RepeatedCharacter,
    /// The account's email address or the part of it before the `@`.
    #[error("password must not be your email address")]
    MatchesEmail,
    /// One of the most common passwords.
    #[error("password is too common; choose one that is harder to guess")]
    TooCommon,
}

impl PasswordPolicy {
    /// Checks a new `password` for the account with address `email`.
    ///
    /// # Errors
    ///
    /// The first rule the password breaks, as a [`PolicyViolation`].
    pub fn check(&self, password: &str, email: &str) -> Result<(), PolicyViolation> {
        let len = password.chars().count();
        if len < self.min_len {
            return Err(PolicyViolation::TooShort { min: self.min_len });
        }
        if len > self.max_len {
            return Err(PolicyViolation::TooLong { max: self.max_len });
        }
        let mut chars = password.chars();
        if let Some(first) = chars.next()
            && chars.all(|c| c == first)
        {
            return Err(PolicyViolation::RepeatedCharacter);
        }
        let lowered = password.to_lowercase();
        let email = email.trim().to_lowercase();
        let local_part = email.rsplit_once('@').map_or(email.as_str(), |(l, _)| l);
        if !email.is_empty() && (lowered == email || lowered == local_part) {
            return Err(PolicyViolation::MatchesEmail);
        }
        if COMMON_PASSWORDS.contains(&lowered.as_str()) {
            return Err(PolicyViolation::TooCommon);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use argon2::PasswordHasher;
    use argon2::password_hash::PasswordVerifier;

    use super::*;

    #[test]
    fn our_hashes_verify_with_the_argon2_crate_and_back() {
        let ours = hash_password("cross check").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"cross check", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"cross checK", &parsed)
                .is_err()
        );

        let theirs = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            current_params().unwrap(),
        )
        .hash_password(b"cross check")
        .unwrap()
        .to_string();
        assert_eq!(
            verify_password("cross check", &theirs),
            Ok(Verified::Match {
                needs_rehash: false
            })
        );
        assert_eq!(
            verify_password("cross checK", &theirs),
            Ok(Verified::Mismatch)
        );
    }

    fn weak_hash(algorithm: Algorithm, password: &str) -> String {
        let params = Params::new(1024, 1, 1, None).unwrap();
        Argon2::new(algorithm, Version::V0x13, params)
            .hash_password(password.as_bytes())
            .unwrap()
            .to_string()
    }

    #[test]
    fn round_trip_matches_without_rehash() {
        let stored = hash_password("correct horse battery").unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(
            verify_password("correct horse battery", &stored),
            Ok(Verified::Match {
                needs_rehash: false
            })
        );
    }

    #[test]
    fn hashes_are_salted() {
        let a = hash_password("same password here").unwrap();
        let b = hash_password("same password here").unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn wrong_password_is_a_mismatch() {
        let stored = hash_password("correct horse battery").unwrap();
        assert_eq!(
            verify_password("correct horse battery!", &stored),
            Ok(Verified::Mismatch)
        );
    }

    #[test]
    fn bcrypt_hashes_verify_and_need_rehash() {
        let stored = bcrypt::hash("legacy password", 4).unwrap();
        assert!(stored.starts_with("$2b$04$"));
        assert_eq!(
            verify_password("legacy password", &stored),
            Ok(Verified::Match { needs_rehash: true })
        );
        assert_eq!(
            verify_password("legacy passworD", &stored),
            Ok(Verified::Mismatch)
        );
        // Same hash under the `$2y$` and `$2a$` spellings of other systems.
        for prefix in ["$2y$", "$2a$"] {
            let other = format!("{prefix}{}", &stored[4..]);
            assert_eq!(
                verify_password("legacy password", &other),
                Ok(Verified::Match { needs_rehash: true })
            );
        }
    }

    #[test]
    fn weaker_argon2id_needs_rehash() {
        let stored = weak_hash(Algorithm::Argon2id, "old params");
        assert!(stored.contains("m=1024,t=1,p=1"));
        assert_eq!(
            verify_password("old params", &stored),
            Ok(Verified::Match { needs_rehash: true })
        );
        assert_eq!(
            verify_password("old paramz", &stored),
            Ok(Verified::Mismatch)
        );
    }

    #[test]
    fn argon2i_needs_rehash() {
        let stored = weak_hash(Algorithm::Argon2i, "other variant");
        assert!(stored.starts_with("$argon2i$"));
        assert_eq!(
            verify_password("other variant", &stored),
            Ok(Verified::Match { needs_rehash: true })
        );
    }

    #[test]
    fn garbage_stored_hashes_are_errors() {
        for stored in [
            "",
            "plaintext",
            "$1$abc$def",
            "$argon2id$",
            "$argon2id$v=19$m=19456,t=2,p=1",
            "$argon2x$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo",
            "$2b$04$tooshort",
            "$2b$xx$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert!(
                verify_password("anything", stored).is_err(),
                "accepted {stored:?}"
            );
        }
        assert_eq!(
            verify_password("anything", "plaintext"),
            Err(PasswordError::UnrecognisedHash)
        );
    }

    #[test]
    fn excessive_stored_parameters_are_refused_before_work() {
        let stored = weak_hash(Algorithm::Argon2id, "x").replace("m=1024", "m=4194304");
        assert!(matches!(
            verify_password("x", &stored),
            Err(PasswordError::MalformedHash(_))
        ));
        let bcrypt = bcrypt::hash("x", 4).unwrap().replacen("$04$", "$31$", 1);
        assert!(matches!(
            verify_password("x", &bcrypt),
            Err(PasswordError::MalformedHash(_))
        ));
    }

    #[test]
    fn burn_verification_time_takes_as_long_as_a_verify() {
        // Warm the dummy hash, then check the call does real argon2 work:
        // it must take at least a tenth of a verification with the current
        // parameters (generous to stay stable on a loaded machine).
        burn_verification_time("warm up");
        let stored = hash_password("some password").unwrap();
        let start = std::time::Instant::now();
        let _ = verify_password("some password", &stored);
        let verify = start.elapsed();
        let start = std::time::Instant::now();
        burn_verification_time("unknown user's password");
        let burn = start.elapsed();
        assert!(burn * 10 >= verify, "burn {burn:?} vs verify {verify:?}");
    }

    #[test]
    fn policy_accepts_a_reasonable_password() {
        let policy = PasswordPolicy::default();
        assert_eq!(
            policy.check("violet staple orbit", "ann@example.com"),
            Ok(())
        );
        assert_eq!(policy.check("ünïcödé-pässwörd", "ann@example.com"), Ok(()));
    }

    #[test]
    fn policy_enforces_length_in_characters() {
        let policy = PasswordPolicy::default();
        assert_eq!(
            policy.check("short pass", "ann@example.com"),
            Err(PolicyViolation::TooShort { min: 12 })
        );
        // 11 two-byte characters: 22 bytes but still too short.
        assert_eq!(
            policy.check("ééééééééééa", ""),
            Err(PolicyViolation::TooShort { min: 12 })
        );
        assert_eq!(
            policy.check(&"ab".repeat(65), ""),
            Err(PolicyViolation::TooLong { max: 128 })
        );
        assert_eq!(
            PolicyViolation::TooShort { min: 12 }.to_string(),
            "password must be at least 12 characters"
        );
    }

    #[test]
    fn policy_refuses_repeats_email_and_common_passwords() {
        let policy = PasswordPolicy::default();
        assert_eq!(
            policy.check("aaaaaaaaaaaaaaa", ""),
            Err(PolicyViolation::RepeatedCharacter)
        );
        assert_eq!(
            policy.check("Long.Name@Example.com", "long.name@example.com"),
            Err(PolicyViolation::MatchesEmail)
        );
        assert_eq!(
            policy.check("Long.Name.Here", "long.name.here@example.com"),
            Err(PolicyViolation::MatchesEmail)
        );
        assert_eq!(
            policy.check("Password1234", "ann@example.com"),
            Err(PolicyViolation::TooCommon)
        );
        assert_eq!(
            policy.check("qwertyuiopas", "ann@example.com"),
            Err(PolicyViolation::TooCommon)
        );
    }
}
