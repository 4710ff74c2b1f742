//! Second factor: RFC 6238 time-based one-time passwords and recovery codes.
//!
//! TOTP here is what every authenticator app speaks: HMAC-SHA1, six digits,
//! a 30-second step, shared through an `otpauth://` URI (usually shown as a
//! QR code). [`TotpSecret::verify`] accepts one step of clock drift either
//! way and refuses a step at or before the last one used, so a code that
//! was seen once cannot be replayed.
//!
//! Recovery codes are random strings the user writes down. They carry about
//! 60 bits each, so a fast hash (SHA-256) is enough to store them: unlike
//! passwords they cannot be guessed from a dictionary.

use std::fmt;

use data_encoding::{BASE32_NOPAD, HEXLOWER};
use hmac::{Hmac, Mac};
use rand::RngExt;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of a newly generated secret, in bytes (RFC 4226 recommends 160 bits).
const SECRET_LEN: usize = 20;
/// Shortest secret accepted from elsewhere, in bytes (RFC 4226 requires 128 bits).
const MIN_SECRET_LEN: usize = 16;
/// Longest secret accepted from elsewhere, in bytes.
const MAX_SECRET_LEN: usize = 64;
/// Length of a TOTP step, in seconds.
const STEP_SECS: u64 = 30;
/// Digits in a TOTP code.
const DIGITS: u32 = 6;

/// Characters of recovery codes: lowercase letters and digits without the
/// look-alikes `0`, `o`, `1`, `l` and `i`. 31 symbols, 4.95 bits each.
const RECOVERY_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
/// Groups in a recovery code.
const RECOVERY_GROUPS: usize = 3;
/// Characters per group; 3 × 4 = 12 characters ≈ 59.5 bits.
const RECOVERY_GROUP_LEN: usize = 4;

/// What went wrong reading a TOTP secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TotpError {
    /// The text is not RFC 4648 base32.
    #[error("TOTP secret is not valid base32")]
    InvalidBase32,
    /// The secret decodes to fewer than 16 or more than 64 bytes.
    #[error("TOTP secret must be 16 to 64 bytes, got {0}")]
    InvalidLength(usize),
}

/// The key shared between the server and the user's authenticator app.
///
/// Its `Debug` output hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct TotpSecret {
    bytes: Vec<u8>,
}

impl fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TotpSecret").finish_non_exhaustive()
    }
}

impl TotpSecret {
    /// A new secret of 20 random bytes.
    pub fn generate() -> Self {
        let mut bytes = vec![0u8; SECRET_LEN];
        rand::fill(&mut bytes[..]);
        Self { bytes }
    }

    /// Reads a secret in base32, as [`TotpSecret::to_base32`] writes it.
    ///
    /// Case, spaces, dashes and trailing `=` padding are ignored, so a
    /// secret typed in by hand from an app's display also reads.
    ///
    /// # Errors
    ///
    /// [`TotpError::InvalidBase32`] if the text is not base32;
    /// [`TotpError::InvalidLength`] if it is not 16 to 64 bytes long.
    pub fn from_base32(text: &str) -> Result<Self, TotpError> {
        let cleaned: String = text
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .collect::<String>()
            .trim_end_matches('=')
            .to_ascii_uppercase();
        let bytes = BASE32_NOPAD
            .decode(cleaned.as_bytes())
            .map_err(|_| TotpError::InvalidBase32)?;
        if !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&bytes.len()) {
            return Err(TotpError::InvalidLength(bytes.len()));
        }
        Ok(Self { bytes })
    }

    /// The secret as RFC 4648 base32 without padding, uppercase.
    pub fn to_base32(&self) -> String {
        BASE32_NOPAD.encode(&self.bytes)
    }

    /// The `otpauth://totp/…` URI authenticator apps read from a QR code,
    /// labelled `issuer:account` and naming the issuer, algorithm, digits
    /// and period explicitly.
    pub fn otpauth_uri(&self, issuer: &str, account: &str) -> String {
        let issuer = percent_encode(issuer);
        format!(
            "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}\
             &algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
            account = percent_encode(account),
            secret = self.to_base32(),
        )
    }

    /// The six-digit code for the time `unix_seconds`.
    pub fn code_at(&self, unix_seconds: u64) -> String {
        hotp(&self.bytes, unix_seconds / STEP_SECS, DIGITS)
    }

    /// Checks `code` at time `unix_seconds`, accepting the current step and
    /// one step either side.
    ///
    /// Steps at or before `last_used_step` are refused, so each code works
    /// once. On success returns the matched step: store it and pass it as
    /// `last_used_step` next time. Spaces in `code` are ignored.
    pub fn verify(
        &self,
        code: &str,
        unix_seconds: u64,
        last_used_step: Option<u64>,
    ) -> Option<u64> {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let current = unix_seconds / STEP_SECS;
        let mut matched = None;
        // Every candidate is computed and compared in constant time; if two
        // steps share a code, the later one wins, which blocks more replays.
        for step in current.saturating_sub(1)..=current.saturating_add(1) {
            let candidate = hotp(&self.bytes, step, DIGITS);
            let equal: bool = candidate.as_bytes().ct_eq(code.as_bytes()).into();
            if equal && last_used_step.is_none_or(|last| step > last) {
                matched = Some(step);
            }
        }
        matched
    }
}

/// RFC 4226 HOTP: HMAC-SHA1 of the big-endian `counter`, dynamically
/// truncated to 31 bits and reduced to `digits` decimal digits.
fn hotp(secret: &[u8], counter: u64, digits: u32) -> String {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length");
    };
    mac.update(&counter.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let value = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    let code = u64::from(value) % 10u64.pow(digits);
    format!("{code:0width$}", width = digits as usize)
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `n` new recovery codes, like `k7mq-x2vd-h9wc`: three groups of four
/// characters from an alphabet without look-alikes, about 60 random bits.
///
/// Show them to the user once and store only [`hash_recovery_code`] of each.
pub fn generate_recovery_codes(n: usize) -> Vec<String> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let groups: Vec<String> = (0..RECOVERY_GROUPS)
                .map(|_| {
                    (0..RECOVERY_GROUP_LEN)
                        .map(|_| {
                            char::from(
                                RECOVERY_ALPHABET[rng.random_range(0..RECOVERY_ALPHABET.len())],
                            )
                        })
                        .collect()
                })
                .collect();
            groups.join("-")
        })
        .collect()
}

/// The canonical form of a recovery code as typed by a user: lowercase,
/// without dashes or whitespace.
pub fn normalise_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// The stored form of a recovery code: lowercase hex SHA-256 of
/// [`normalise_recovery_code`] of it. Look a typed code up by this value.
pub fn hash_recovery_code(code: &str) -> String {
    HEXLOWER.encode(&Sha256::digest(normalise_recovery_code(code).as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_SECRET: &[u8] = b"12345678901234567890";

    #[test]
    fn rfc6238_sha1_test_vectors() {
        let table = [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ];
        for (time, expected) in table {
            assert_eq!(hotp(RFC_SECRET, time / 30, 8), expected, "T = {time}");
        }
    }

    #[test]
    fn six_digit_codes_are_the_rfc_values_truncated() {
        let secret = TotpSecret {
            bytes: RFC_SECRET.to_vec(),
        };
        assert_eq!(secret.code_at(59), "287082");
        assert_eq!(secret.code_at(1_111_111_109), "081804");
    }

    #[test]
    fn rfc4226_hotp_values() {
        // RFC 4226 Appendix D, counters 0 to 2.
        assert_eq!(hotp(RFC_SECRET, 0, 6), "755224");
        assert_eq!(hotp(RFC_SECRET, 1, 6), "287082");
        assert_eq!(hotp(RFC_SECRET, 2, 6), "359152");
    }

    #[test]
    fn verify_accepts_one_step_of_drift_either_way() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_015; // step 56_666_667
        let step = now / 30;
        assert_eq!(secret.verify(&secret.code_at(now), now, None), Some(step));
        assert_eq!(
            secret.verify(&secret.code_at(now - 30), now, None),
            Some(step - 1)
        );
        assert_eq!(
            secret.verify(&secret.code_at(now + 30), now, None),
            Some(step + 1)
        );
        let far = [secret.code_at(now - 60), secret.code_at(now + 60)];
        for code in far {
            // Skip the one-in-a-million case where a far code equals a near one.
            let near: Vec<String> = (-1..=1)
                .map(|d: i64| secret.code_at(now.saturating_add_signed(d * 30)))
                .collect();
            if !near.contains(&code) {
                assert_eq!(secret.verify(&code, now, None), None);
            }
        }
    }

    #[test]
    fn verify_refuses_replay_and_earlier_steps() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_015;
        let code = secret.code_at(now);
        let step = secret.verify(&code, now, None).unwrap();
        assert_eq!(secret.verify(&code, now, Some(step)), None);
        assert_eq!(secret.verify(&code, now + 10, Some(step)), None);
        // A code from the step before the last used one is refused too.
        assert_eq!(
            secret.verify(&secret.code_at(now - 30), now, Some(step)),
            None
        );
        // The next step's code is still good.
        assert_eq!(
            secret.verify(&secret.code_at(now + 30), now + 30, Some(step)),
            Some(step + 1)
        );
    }

    #[test]
    fn verify_refuses_malformed_codes() {
        let secret = TotpSecret::generate();
        let now = 1_700_000_015;
        let code = secret.code_at(now);
        assert_eq!(secret.verify(&code[..5], now, None), None);
        assert_eq!(secret.verify(&format!("{code}0"), now, None), None);
        assert_eq!(secret.verify("abcdef", now, None), None);
        assert_eq!(secret.verify("", now, None), None);
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(secret.verify(&spaced, now, None), Some(now / 30));
    }

    #[test]
    fn verify_at_time_zero_does_not_underflow() {
        let secret = TotpSecret::generate();
        assert_eq!(secret.verify(&secret.code_at(0), 0, None), Some(0));
    }

    #[test]
    fn base32_round_trip() {
        let secret = TotpSecret::generate();
        let text = secret.to_base32();
        assert_eq!(text.len(), 32);
        assert!(!text.contains('='));
        assert_eq!(TotpSecret::from_base32(&text).unwrap(), secret);
        let typed = text
            .to_lowercase()
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(TotpSecret::from_base32(&typed).unwrap(), secret);
    }

    #[test]
    fn base32_known_value_and_errors() {
        let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(secret.bytes, RFC_SECRET);
        assert_eq!(
            TotpSecret::from_base32("not base32!"),
            Err(TotpError::InvalidBase32)
        );
        assert_eq!(
            TotpSecret::from_base32("GEZDGNBV"),
            Err(TotpError::InvalidLength(5))
        );
    }

    #[test]
    fn otpauth_uri_is_percent_encoded() {
        let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(
            secret.otpauth_uri("Switch Board", "ann+2fa@example.com"),
            "otpauth://totp/Switch%20Board:ann%2B2fa%40example.com\
             ?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Switch%20Board\
             &algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let secret = TotpSecret::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        let debug = format!("{secret:?}");
        assert!(!debug.contains("GEZ") && !debug.contains("49"), "{debug}");
    }

    #[test]
    fn recovery_codes_have_the_documented_shape() {
        let codes = generate_recovery_codes(10);
        assert_eq!(codes.len(), 10);
        for code in &codes {
            assert_eq!(code.len(), 14, "{code}");
            let groups: Vec<&str> = code.split('-').collect();
            assert_eq!(groups.len(), 3);
            for group in groups {
                assert_eq!(group.len(), 4);
                assert!(
                    group.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)),
                    "{code}"
                );
            }
        }
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
    }

    #[test]
    fn recovery_code_hash_ignores_case_dashes_and_spaces() {
        let code = "k7mq-x2vd-h9wc";
        assert_eq!(normalise_recovery_code(" K7MQ x2vd-H9WC "), "k7mqx2vdh9wc");
        let stored = hash_recovery_code(code);
        assert_eq!(stored.len(), 64);
        assert_eq!(hash_recovery_code("K7MQ X2VD H9WC"), stored);
        assert_eq!(hash_recovery_code("k7mqx2vdh9wc"), stored);
        assert_ne!(hash_recovery_code("k7mq-x2vd-h9wd"), stored);
        // SHA-256("abc") from FIPS 180-2, through the normalisation.
        assert_eq!(
            hash_recovery_code("A-B-C"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
