//! Domain names: normalisation and the app's domain set.
//!
//! Names are normalised once with UTS-46 (the `idna` crate: IDNA mapping,
//! case folding, Punycode, STD3 ASCII rules, DNS length checks) and one
//! trailing dot is removed. A name that fails normalisation is invalid: it is
//! kept raw where it is carried (an event's `domains`) and never matches.

use std::collections::HashSet;

use idna::uts46::{AsciiDenyList, DnsLength, Hyphens, Uts46};

/// Why a name is not a valid domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// The name is empty (or only a dot).
    #[error("empty domain name")]
    Empty,
    /// UTS-46 processing failed: disallowed code point, bad Punycode, a label
    /// over 63 octets, a name over 253 octets, or an STD3-forbidden character.
    #[error("invalid domain name {0:?}")]
    Invalid(String),
}

/// Normalise `name` to its ASCII (Punycode) lower-case form without a trailing
/// dot: `"Dom01.Example.ORG."` → `"dom01.example.org"`, `"bücher.de"` →
/// `"xn--bcher-kva.de"`. Fullwidth dots (`．`, `。`) map to `.`.
///
/// # Errors
///
/// [`DomainError::Empty`] for `""` or `"."`; [`DomainError::Invalid`] for
/// anything UTS-46 with STD3 rules and DNS length checks refuses.
pub fn normalize(name: &str) -> Result<String, DomainError> {
    if name.is_empty() || name == "." {
        return Err(DomainError::Empty);
    }
    if is_normal_ascii(name) {
        return Ok(name.to_owned());
    }
    let ascii = Uts46::new()
        .to_ascii(
            name.as_bytes(),
            AsciiDenyList::STD3,
            Hyphens::CheckFirstLast,
            DnsLength::VerifyAllowRootDot,
        )
        .map_err(|_| DomainError::Invalid(name.to_owned()))?;
    let trimmed = ascii.strip_suffix('.').unwrap_or(&ascii);
    if trimmed.is_empty() {
        return Err(DomainError::Empty);
    }
    Ok(trimmed.to_owned())
}

/// Like [`normalize`], but a leading `*.` wildcard label is kept and the rest
/// normalised: `"*.EXAMPLE.org."` → `"*.example.org"`. Used for names that
/// may be patterns, such as certificate names in an event.
///
/// # Errors
///
/// As [`normalize`] for the part after `*.`.
pub fn normalize_pattern(name: &str) -> Result<String, DomainError> {
    match name.strip_prefix("*.") {
        Some(rest) => normalize(rest).map(|n| format!("*.{n}")),
        None => normalize(name),
    }
}

/// Fast path: already lower-case LDH ASCII, labels 1..=63 octets, at most 253
/// octets, no trailing dot, no Punycode label (which UTS-46 must validate).
fn is_normal_ascii(name: &str) -> bool {
    const MAX_NAME: usize = 253;
    const MAX_LABEL: usize = 63;
    if name.is_empty() || name.len() > MAX_NAME {
        return false;
    }
    name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL
            && !label.starts_with("xn--")
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

/// An app's domains: exact names and one-label wildcards (`*.example.com`
/// matches `a.example.com`, not `example.com` nor `a.b.example.com`).
#[derive(Debug, Clone, Default)]
pub struct DomainSet {
    exact: HashSet<String>,
    wildcard_suffixes: HashSet<String>,
    /// Normalised entries as configured, wildcards written `*.suffix`.
    listed: Vec<String>,
}

impl DomainSet {
    /// Build a set from configured names.
    ///
    /// # Errors
    ///
    /// Every invalid entry, each with its [`DomainError`] (a config problem:
    /// reported at deploy, all at once).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Result<Self, Vec<DomainError>> {
        let mut set = Self::default();
        let mut errors = Vec::new();
        for name in names {
            let name = name.as_ref();
            let (wildcard, rest) = match name.strip_prefix("*.") {
                Some(rest) => (true, rest),
                None => (false, name),
            };
            match normalize(rest) {
                Ok(n) if wildcard => {
                    set.listed.push(format!("*.{n}"));
                    set.wildcard_suffixes.insert(n);
                }
                Ok(n) => {
                    set.listed.push(n.clone());
                    set.exact.insert(n);
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(set)
        } else {
            Err(errors)
        }
    }

    /// The normalised entries in configuration order (wildcards as `*.suffix`).
    pub fn listed(&self) -> &[String] {
        &self.listed
    }

    /// True if `name`, after [`normalize`], is in the set. Invalid names never
    /// match.
    pub fn is_mine(&self, name: &str) -> bool {
        match normalize(name) {
            Ok(n) => self.contains_normalized(&n),
            Err(_) => false,
        }
    }

    /// Like [`DomainSet::is_mine`] for a name that is either normalised or
    /// an invalid name kept raw (an event's `domains`): an invalid name never
    /// matches, even when its suffix is one of the set's wildcards
    /// (`bad_label.example.org` does not match `*.example.org`).
    pub fn contains_normalized(&self, name: &str) -> bool {
        if self.exact.contains(name) {
            // Entries are normal forms and normalisation is idempotent, so an
            // invalid raw name can never equal one.
            return true;
        }
        match name.split_once('.') {
            Some((_, rest)) if !self.wildcard_suffixes.is_empty() => {
                self.wildcard_suffixes.contains(rest) && normalize(name).is_ok_and(|n| n == name)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_case_trailing_dot_and_idn() {
        assert_eq!(
            normalize("Dom01.Example.ORG.").unwrap(),
            "dom01.example.org"
        );
        assert_eq!(normalize("bücher.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(normalize("BÜCHER.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(normalize("xn--bcher-kva.de").unwrap(), "xn--bcher-kva.de");
        assert_eq!(normalize("example\u{FF0E}com").unwrap(), "example.com");
        assert_eq!(normalize("example\u{3002}com").unwrap(), "example.com");
    }

    #[test]
    fn rejects_invalid_names() {
        assert_eq!(normalize(""), Err(DomainError::Empty));
        assert!(normalize(".").is_err());
        assert!(normalize("a..b").is_err());
        assert!(normalize(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(normalize("bad_name.com").is_err());
        assert!(normalize("sp ace.com").is_err());
        assert!(normalize("xn--a.com").is_err(), "invalid punycode");
    }

    #[test]
    fn patterns_keep_the_wildcard_label() {
        assert_eq!(
            normalize_pattern("*.EXAMPLE.org.").unwrap(),
            "*.example.org"
        );
        assert_eq!(
            normalize_pattern("Mail.example.org").unwrap(),
            "mail.example.org"
        );
        assert!(normalize_pattern("*.bad_name").is_err());
        assert!(normalize_pattern("a.*.example.org").is_err());
    }

    #[test]
    fn normalisation_is_idempotent() {
        for name in [
            "Dom01.Example.ORG.",
            "bücher.de",
            "example\u{FF0E}com",
            "a-b.c",
        ] {
            let once = normalize(name).unwrap();
            assert_eq!(normalize(&once).unwrap(), once);
        }
    }

    #[test]
    fn set_matches_exact_and_one_label_wildcards() {
        let set = DomainSet::new(&["Dom01.example.org", "*.Example.COM"]).unwrap();
        assert!(set.is_mine("dom01.example.org"));
        assert!(set.is_mine("DOM01.EXAMPLE.ORG."));
        assert!(set.is_mine("mail.example.com"));
        assert!(!set.is_mine("example.com"));
        assert!(!set.is_mine("a.b.example.com"));
        assert!(!set.is_mine("dom02.example.org"));
        assert!(!set.is_mine("bad_name.example.com"));
        assert_eq!(set.listed(), ["dom01.example.org", "*.example.com"]);
    }

    #[test]
    fn set_reports_every_invalid_entry() {
        let errs = DomainSet::new(&["ok.org", "bad_one", "", "*.also bad"]).unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn idn_edge_cases() {
        // Homoglyph: Cyrillic `а` is a different name, never the Latin one.
        let set = DomainSet::new(&["paypal.com", "*.example.org"]).unwrap();
        let homoglyph = "p\u{0430}ypal.com";
        let normal = normalize(homoglyph).unwrap();
        assert!(normal.starts_with("xn--"), "{normal}");
        assert!(!set.is_mine(homoglyph));
        // Fullwidth dot, mixed case, trailing dot all reach the same name.
        assert!(set.is_mine("PayPal\u{FF0E}COM."));
        // Labels over 63 octets, alone or after Punycode expansion.
        assert!(normalize(&format!("{}.org", "a".repeat(64))).is_err());
        assert!(normalize(&format!("{}.org", "ü".repeat(60))).is_err());
        // Invalid Punycode and forbidden characters never match a wildcard,
        // even when their suffix is one.
        for bad in [
            "xn--a.example.org",
            "xn--zz-.example.org",
            "bad_label.example.org",
            "-lead.example.org",
            "a b.example.org",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
            assert!(!set.is_mine(bad), "{bad}");
            assert!(!set.contains_normalized(bad), "{bad}");
        }
        assert!(set.contains_normalized("mail.example.org"));
        assert!(set.contains_normalized("xn--bcher-kva.example.org"));
    }

    mod properties {
        use proptest::prelude::*;

        use super::super::*;

        /// Names built from the characters that matter: ASCII letters in both
        /// cases, digits, `-`, `_`, dots (ASCII, fullwidth, ideographic),
        /// `xn--` prefixes, accented and Cyrillic letters, spaces.
        fn name() -> impl Strategy<Value = String> {
            let atoms = prop::sample::select(vec![
                "a", "B", "z", "0", "9", "-", "_", ".", "\u{FF0E}", "\u{3002}", "xn--", "ü",
                "\u{0430}", "ß", " ", "*", "\u{200D}", "\u{FF21}", "example", "org",
            ]);
            prop::collection::vec(atoms, 0..24).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(5_000))]

            /// Normalisation is idempotent and yields lower-case ASCII within
            /// DNS length limits.
            #[test]
            fn normalisation_is_idempotent_and_ascii(raw in name()) {
                if let Ok(n) = normalize(&raw) {
                    prop_assert_eq!(normalize(&n), Ok(n.clone()));
                    prop_assert!(n.is_ascii() && n.len() <= 253, "{}", n);
                    prop_assert!(n.split('.').all(|l| !l.is_empty() && l.len() <= 63), "{}", n);
                    prop_assert_eq!(n.to_ascii_lowercase(), n);
                }
            }

            /// An invalid name never matches, exactly or by wildcard, even
            /// kept raw in an event; a valid one matches its own set.
            #[test]
            fn invalid_names_never_match(raw in name(), suffix in name()) {
                let set = DomainSet::new(&["*.example.org", "example.org"]).unwrap();
                let candidate = format!("{raw}.example.org");
                match normalize(&candidate) {
                    Err(_) => {
                        prop_assert!(!set.is_mine(&candidate));
                        prop_assert!(!set.contains_normalized(&candidate));
                    }
                    Ok(n) => prop_assert_eq!(set.is_mine(&candidate), set.contains_normalized(&n)),
                }
                if let Ok(n) = normalize(&suffix) {
                    let own = DomainSet::new(&[n.as_str()]).unwrap();
                    prop_assert!(own.is_mine(&suffix));
                }
            }
        }
    }
}
