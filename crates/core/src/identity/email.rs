//! [`normalise_email`]: the one form of a sign-in email that accounts are
//! stored and compared by, so one person has one account however the
//! address is written.
//!
//! The form is Unicode NFKC (fullwidth `ｍ` is `m`, `e` + U+0301 is `é`),
//! then full Unicode case folding (`ß` is `ss`, `ς` is `σ`), then NFKC again
//! (folding may undo it), with the trailing dots of the domain removed (DNS
//! names end in an implicit `.`). The Turkish dotless `ı` (U+0131) and
//! dotted `İ` (U+0130) fold to plain `i`: case folding leaves `ı` apart and
//! turns `İ` into `i` + U+0307, yet to a reader `mıke` and `mike` are one
//! address, and an impostor should not get one by the difference.
//!
//! Addresses with control, format (`Cf`: zero-width spaces and joiners,
//! bidirectional marks, the byte-order mark) or other invisible characters
//! are refused rather than cleaned: whoever sends one is not typing an
//! address.

use unicode_normalization::UnicodeNormalization;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

use crate::error::{Error, Result};

/// Characters that show nothing but are not in `Cc` or `Cf`: the combining
/// grapheme joiner, Hangul fillers, the Mongolian vowel separator's
/// neighbours, braille blank and the variation selectors.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{034F}'
            | '\u{115F}'
            | '\u{1160}'
            | '\u{17B4}'
            | '\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{2800}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FFA0}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Whether `c` may appear in an address at all.
fn refused(c: char) -> bool {
    c.is_whitespace()
        || invisible(c)
        || matches!(
            c.general_category(),
            GeneralCategory::Control
                | GeneralCategory::Format
                | GeneralCategory::Surrogate
                | GeneralCategory::PrivateUse
                | GeneralCategory::Unassigned
                | GeneralCategory::LineSeparator
                | GeneralCategory::ParagraphSeparator
        )
}

/// The normalised form of `email` (see the module), the one accounts are
/// stored and looked up by. Whitespace around it is ignored.
///
/// # Errors
///
/// [`Error::InvalidArgument`] naming `field` for an address with control,
/// format or invisible characters (or spaces inside), and for one that is
/// not `local@domain` once normalised.
pub fn normalise_email(field: &str, email: &str) -> Result<String> {
    let email = email.trim();
    if let Some(c) = email.chars().find(|c| refused(*c)) {
        return Err(Error::invalid_argument(
            field,
            format!(
                "must not contain invisible, control or space characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    let composed: String = email.nfkc().collect();
    let folded: String = caseless::default_case_fold_str(&composed)
        .chars()
        .map(|c| if c == '\u{131}' { 'i' } else { c })
        .collect();
    // İ folds to i + U+0307 (combining dot above); the dot goes with it.
    let folded = folded.replace("i\u{307}", "i");
    let normalised: String = folded.nfkc().collect();
    // NFKC can produce what was refused above (it cannot today, but the
    // check is cheap): test the result too.
    if normalised.chars().any(refused) {
        return Err(Error::invalid_argument(
            field,
            "must not contain invisible, control or space characters",
        ));
    }
    let Some((local, domain)) = normalised.rsplit_once('@') else {
        return Err(Error::invalid_argument(field, "is not an email address"));
    };
    let domain = domain.trim_end_matches('.');
    if local.is_empty() || domain.is_empty() || local.contains('@') {
        return Err(Error::invalid_argument(field, "is not an email address"));
    }
    Ok(format!("{local}@{domain}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(variant: &str, canonical: &str) {
        assert_eq!(
            normalise_email("email", variant).unwrap(),
            canonical,
            "{variant:?}"
        );
    }

    #[test]
    fn variants_of_one_address_normalise_alike() {
        same("me@example.com", "me@example.com");
        same("  Me@Example.COM ", "me@example.com");
        same("ｍe@example.com", "me@example.com");
        same("ｍｅ＠ｅｘａｍｐｌｅ．ｃｏｍ", "me@example.com");
        same("me@example.com.", "me@example.com");
        same("me@example.com..", "me@example.com");
        same("jose\u{301}@example.com", "jos\u{e9}@example.com");
        same("JOS\u{c9}@example.com", "jos\u{e9}@example.com");
        same("m\u{131}ke@example.com", "mike@example.com");
        same("M\u{130}KE@example.com", "mike@example.com");
        same("stra\u{df}e@example.com", "strasse@example.com");
        same("\u{fb01}@example.com", "fi@example.com");
    }

    #[test]
    fn invisible_and_control_characters_are_refused() {
        for email in [
            "m\u{200b}e@example.com",
            "me\u{200d}@example.com",
            "\u{feff}me@example.com",
            "me@exam\u{202e}ple.com",
            "me@example.com\u{200e}",
            "m\u{7}e@example.com",
            "m\u{0}e@example.com",
            "m e@example.com",
            "me@exa\u{a0}mple.com",
            "m\u{34f}e@example.com",
            "me\u{fe0f}@example.com",
            "m\u{ad}e@example.com",
        ] {
            let error = normalise_email("email", email).unwrap_err();
            assert!(
                matches!(&error, Error::InvalidArgument { field, .. } if field == "email"),
                "{email:?}: {error:?}"
            );
        }
    }

    #[test]
    fn what_is_not_an_address_is_refused() {
        for email in ["", "me", "@example.com", "me@", "me@.", "a@b@c"] {
            assert!(normalise_email("email", email).is_err(), "{email:?}");
        }
    }
}
