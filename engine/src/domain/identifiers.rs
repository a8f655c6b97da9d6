//! Identifiers from outside Tally that a wallet can be found by — a loyalty card's number, a phone
//! number, an e-mail address, the shop's CRM id (ADR 0015). A value is normalised here, so the ways a
//! POS and a storefront write one number meet, then known only by its [`lookup`]: a keyed hash under the
//! tenant's lookup key, which the log never holds. The log and the wallet keep the lookup, never the value.

use super::ids::FieldError;
pub use tally_proto::v1::IdentifierKind;

/// The most identifiers one wallet may carry.
pub const IDENTIFIERS_PER_WALLET_MAX: usize = 16;

/// The longest value accepted, before normalisation (an e-mail address's limit).
pub const IDENTIFIER_VALUE_BYTES_MAX: usize = 254;

/// A lookup is the hash's 32 bytes as lower-case hex.
pub const LOOKUP_HEX_LEN: usize = 64;

/// `raw` as its `kind` is normalised (see `IdentifierKind` in `events.proto`), or why it is not one.
pub fn normalise(kind: IdentifierKind, raw: &str) -> Result<String, FieldError> {
    let value = raw.trim();
    if value.is_empty() {
        return Err(FieldError::new("value", "must not be empty"));
    }
    if value.len() > IDENTIFIER_VALUE_BYTES_MAX {
        return Err(FieldError::new("value", format!("must be at most {IDENTIFIER_VALUE_BYTES_MAX} bytes")));
    }
    if value.chars().any(|c| c.is_control() || invisible(c)) {
        return Err(FieldError::new("value", "must not contain control or invisible characters"));
    }
    match kind {
        IdentifierKind::Unspecified => Err(FieldError::new("kind", "must be CARD, PHONE, EMAIL, CRM_ID or REFERRAL_CODE")),
        IdentifierKind::Card => card(value),
        IdentifierKind::Phone => phone(value),
        IdentifierKind::Email => email(value),
        IdentifierKind::CrmId => Ok(value.to_owned()),
        IdentifierKind::ReferralCode => referral_code(value),
    }
}

/// Characters that show as nothing (zero-width spaces and joiners, direction marks, the soft hyphen, the
/// byte-order mark): two values differing only by them would read alike and be two identifiers.
fn invisible(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}' | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}'
        | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}')
}

/// Letters and digits, upper case; spaces and dashes between groups dropped.
fn card(value: &str) -> Result<String, FieldError> {
    let kept: String = value.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    if !kept.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(FieldError::new("value", "a card number holds letters A-Z and digits only (spaces and dashes between groups)"));
    }
    if !(4..=64).contains(&kept.len()) {
        return Err(FieldError::new("value", "a card number has 4 to 64 letters and digits"));
    }
    Ok(kept.to_ascii_uppercase())
}

/// 4 to 32 letters, digits and dashes, upper case (a code read out loud is written either way).
fn referral_code(value: &str) -> Result<String, FieldError> {
    if !(4..=32).contains(&value.len()) || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(FieldError::new("value", "a referral code is 4 to 32 letters A-Z, digits and dashes"));
    }
    Ok(value.to_ascii_uppercase())
}

/// E.164: `+` and 8 to 15 digits; spaces, dashes, dots and parentheses dropped, a leading `00` read as `+`,
/// and the national trunk prefix written after the country code in parentheses (`+44 (0)20 …`) dropped.
fn phone(value: &str) -> Result<String, FieldError> {
    let kept: String = value.replace("(0)", "").chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    let digits = kept.strip_prefix('+').or_else(|| kept.strip_prefix("00"));
    match digits {
        Some(digits) if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0') => {
            Ok(format!("+{digits}"))
        }
        _ => Err(FieldError::new("value", "a phone number is + and the country code, then 8 to 15 digits in all (E.164)")),
    }
}

/// `local@domain`, ASCII (an internationalised domain in its `xn--` form), lower case.
fn email(value: &str) -> Result<String, FieldError> {
    if !value.is_ascii() {
        return Err(FieldError::new("value", "an e-mail address is ASCII here: write an internationalised domain in its xn-- form"));
    }
    let lower = value.to_ascii_lowercase();
    let well_formed = lower.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !lower.chars().any(char::is_whitespace)
    });
    if !well_formed {
        return Err(FieldError::new("value", "an e-mail address is local@domain, without spaces"));
    }
    Ok(lower)
}

/// What identifier `normalised` of `kind` is known by in `key`'s tenant: BLAKE3 keyed with the tenant's
/// lookup key over the kind's number, a zero byte and the value, as lower-case hex. The kind is in the
/// hash, so a card number and a CRM id that read alike are two identifiers.
pub fn lookup(key: &[u8; 32], kind: IdentifierKind, normalised: &str) -> String {
    let mut hasher = blake3::Hasher::new_keyed(key);
    hasher.update(&(kind as i32).to_le_bytes());
    hasher.update(&[0]);
    hasher.update(normalised.as_bytes());
    hasher.finalize().to_hex().to_string()
}

/// Whether `lookup` is one [`lookup`] makes (a recorded one read back, a command built elsewhere).
pub fn is_lookup(lookup: &str) -> bool {
    lookup.len() == LOOKUP_HEX_LEN && lookup.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The kind's name, as histories and the command line show it.
pub fn kind_name(kind: i32) -> &'static str {
    match IdentifierKind::try_from(kind) {
        Ok(IdentifierKind::Card) => "card",
        Ok(IdentifierKind::Phone) => "phone",
        Ok(IdentifierKind::Email) => "email",
        Ok(IdentifierKind::CrmId) => "crm_id",
        Ok(IdentifierKind::ReferralCode) => "referral_code",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ways_one_identifier_is_written_meet() {
        assert_eq!(normalise(IdentifierKind::Card, " 4000-1234 5678 abcd ").unwrap(), "400012345678ABCD");
        assert_eq!(normalise(IdentifierKind::Phone, "+44 (20) 7946-0000").unwrap(), "+442079460000");
        assert_eq!(normalise(IdentifierKind::Phone, "0044 20 7946 0000").unwrap(), "+442079460000");
        assert_eq!(normalise(IdentifierKind::Phone, "+44 (0)20 7946 0000").unwrap(), "+442079460000", "the trunk prefix");
        assert_eq!(normalise(IdentifierKind::Email, "Ada.Lovelace@Example.ORG").unwrap(), "ada.lovelace@example.org");
        assert_eq!(normalise(IdentifierKind::CrmId, " CRM-0001 ").unwrap(), "CRM-0001");
        assert_eq!(normalise(IdentifierKind::ReferralCode, "ann-2026").unwrap(), "ANN-2026");
        assert!(normalise(IdentifierKind::ReferralCode, "A 1").is_err() && normalise(IdentifierKind::ReferralCode, "abc").is_err());
    }

    #[test]
    fn malformed_identifiers_name_the_field() {
        let field = |kind, raw: &str| normalise(kind, raw).unwrap_err().field.into_owned();
        assert_eq!(field(IdentifierKind::Unspecified, "x"), "kind");
        assert_eq!(field(IdentifierKind::Card, "12"), "value");
        assert_eq!(field(IdentifierKind::Card, "1234/5678"), "value");
        assert_eq!(field(IdentifierKind::Phone, "020 7946 0000"), "value", "no country code");
        assert_eq!(field(IdentifierKind::Phone, "+0 2079460000"), "value");
        assert_eq!(field(IdentifierKind::Phone, "+1234567890123456"), "value", "16 digits");
        assert_eq!(field(IdentifierKind::Email, "ada@localhost"), "value");
        assert_eq!(field(IdentifierKind::Email, "a b@example.org"), "value");
        assert_eq!(field(IdentifierKind::Email, "a@b@example.org"), "value");
        assert_eq!(field(IdentifierKind::CrmId, "   "), "value");
        assert_eq!(field(IdentifierKind::CrmId, "a\u{0}b"), "value");
        assert_eq!(field(IdentifierKind::Email, "ann\u{200B}@example.org"), "value", "a zero-width space");
        assert_eq!(field(IdentifierKind::CrmId, "CRM\u{FEFF}1"), "value");
        assert_eq!(field(IdentifierKind::Email, "zoë@example.org"), "value", "ASCII only");
        assert_eq!(field(IdentifierKind::Card, "１２３４"), "value", "full-width digits are not a card number");
        assert_eq!(field(IdentifierKind::CrmId, &"x".repeat(255)), "value");
    }

    #[test]
    fn a_lookup_depends_on_the_key_the_kind_and_the_value() {
        let (a, b) = ([1; 32], [2; 32]);
        let card = lookup(&a, IdentifierKind::Card, "1234");
        assert!(is_lookup(&card), "{card}");
        assert_eq!(card, lookup(&a, IdentifierKind::Card, "1234"));
        assert_ne!(card, lookup(&b, IdentifierKind::Card, "1234"), "another tenant's key");
        assert_ne!(card, lookup(&a, IdentifierKind::CrmId, "1234"), "another kind");
        assert_ne!(card, lookup(&a, IdentifierKind::Card, "12345"));
        assert!(!is_lookup("ABC") && !is_lookup(&card.to_uppercase()));
    }
}
