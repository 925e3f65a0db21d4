//! Normalising customer identities as the feed stores them: phones in
//! E.164, emails lower-cased.

use phonenumber::country;

/// Parses a phone number as a person would write it (`8 (916) 123-45-67`,
/// `+7 916 1234567`), using `default_country` when it has no country code.
/// Returns E.164 (`+79161234567`) or why it is not a phone number.
pub fn normalize_phone(raw: &str, default_country: country::Id) -> Result<String, &'static str> {
    let raw = raw.trim();
    if raw.len() > 40 {
        return Err("is too long for a phone number");
    }
    if !raw
        .chars()
        .all(|c| c.is_ascii_digit() || " +-().".contains(c))
    {
        return Err("may contain only digits, spaces, '+', '-', '(' and ')'");
    }
    let parsed =
        phonenumber::parse(Some(default_country), raw).map_err(|_| "is not a phone number")?;
    if !phonenumber::is_valid(&parsed) {
        return Err("is not a valid phone number for its country");
    }
    Ok(parsed.format().mode(phonenumber::Mode::E164).to_string())
}

/// Checks an email address's shape and lower-cases it.
pub fn normalize_email(raw: &str) -> Result<String, &'static str> {
    let email = raw.trim().to_lowercase();
    if email.len() > 254 {
        return Err("is too long for an email address");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return Err("must look like name@example.com");
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>()[],;:\\\"@".contains(c);
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.chars().any(bad_char);
    if local.is_empty() || local.len() > 64 || local.chars().any(bad_char) || !domain_ok {
        return Err("must look like name@example.com");
    }
    Ok(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn russian_numbers_in_every_usual_spelling() {
        for raw in [
            "8 (916) 123-45-67",
            "+7 916 123 45 67",
            "89161234567",
            "+79161234567",
            " 7 (916) 1234567 ",
        ] {
            assert_eq!(
                normalize_phone(raw, country::Id::RU).as_deref(),
                Ok("+79161234567"),
                "{raw}"
            );
        }
    }

    #[test]
    fn international_numbers_keep_their_country() {
        assert_eq!(
            normalize_phone("+49 30 901820", country::Id::RU).as_deref(),
            Ok("+4930901820")
        );
        assert_eq!(
            normalize_phone("030 901820", country::Id::DE).as_deref(),
            Ok("+4930901820")
        );
    }

    #[test]
    fn garbage_is_not_a_phone() {
        for raw in [
            "",
            "call me",
            "12",
            "+7 916",
            "8916123456789012345",
            "+7 916 123-45-67 ext",
        ] {
            assert!(normalize_phone(raw, country::Id::RU).is_err(), "{raw}");
        }
    }

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ivan@Example.COM ").as_deref(),
            Ok("ivan@example.com")
        );
        assert_eq!(
            normalize_email("иван@пример.рф").as_deref(),
            Ok("иван@пример.рф")
        );
        for raw in [
            "",
            "ivan",
            "ivan@",
            "@example.com",
            "ivan@example",
            "iv an@example.com",
            "a@b@c.d",
            "a@example..com",
        ] {
            assert!(normalize_email(raw).is_err(), "{raw}");
        }
    }
}
