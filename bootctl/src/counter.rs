//! Boot-counting file names: `NAME+LEFT[-DONE].efi`, as systemd-boot 252 parses and
//! renames them (`config_entry_parse_tries`, `config_entry_bump_counters`).
//!
//! Rules mirrored from systemd-boot:
//! - the counter follows the *last* `+` in the file name;
//! - `LEFT` and `DONE` are decimal, at most `i32::MAX`; a missing `-DONE` means 0;
//! - after the counter the name must end with exactly the suffix (`.efi`, lower case);
//!   otherwise the file has no counter at all and is an ordinary (uncounted) entry;
//! - each boot attempt renames `+LEFT-DONE` to `+(LEFT-1, not below 0)-(DONE+1)`.
//!
//! qimg installs counted entries as `+N-0` with `N` in 1..=9, so that every rename
//! the loader makes keeps the name the same length: on FAT the long-name entry is
//! rewritten in place rather than reallocated.

use std::fmt;

/// Largest counter value systemd-boot accepts.
pub const MAX_COUNTER: u32 = i32::MAX as u32;
/// Most tries qimg installs (one digit, so renames keep the name's length).
pub const MAX_TRIES: u32 = 9;

/// Tries left and done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Counter {
    /// Boot attempts left before the entry is bad.
    pub left: u32,
    /// Boot attempts made so far.
    pub done: u32,
}

impl Counter {
    /// The counter after one more boot attempt.
    pub fn bumped(self) -> Counter {
        Counter {
            left: self.left.saturating_sub(1),
            done: (self.done + 1).min(MAX_COUNTER),
        }
    }

    /// True when no tries are left: systemd-boot sorts the entry last.
    pub fn is_bad(self) -> bool {
        self.left == 0
    }
}

/// A file name split into the part before the counter, the counter and the suffix.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EntryName {
    /// Everything before `+LEFT` (or before the suffix when there is no counter).
    pub stem: String,
    /// The counter, if the name has a valid one.
    pub counter: Option<Counter>,
    /// The suffix (`.efi` for Type #2 entries).
    pub suffix: String,
    /// Whether the name spells out `-DONE` (`+3` and `+3-0` mean the same; the
    /// loader always writes the long form when it renames).
    pub done_written: bool,
    /// The counter as the parsed name spelled it, when that is not how it is
    /// formatted (`+03` is 3 tries to the loader): an unchanged name prints as it was.
    pub spelled: Option<(Counter, String)>,
}

fn digits(s: &str) -> Option<(u32, &str)> {
    let end = s
        .bytes()
        .position(|b| !b.is_ascii_digit())
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    let v: u64 = s[..end].parse().ok()?;
    (v <= u64::from(MAX_COUNTER)).then_some((v as u32, &s[end..]))
}

impl EntryName {
    /// Parses `file` the way systemd-boot does. Names that end in `suffix` without a
    /// valid counter are uncounted; names that do not end in `suffix` at all give `None`.
    pub fn parse(file: &str, suffix: &str) -> Option<EntryName> {
        if !file.ends_with(suffix) {
            return None;
        }
        let uncounted = || EntryName {
            stem: file[..file.len() - suffix.len()].to_owned(),
            counter: None,
            suffix: suffix.to_owned(),
            done_written: false,
            spelled: None,
        };
        let Some(plus) = file.rfind('+') else {
            return Some(uncounted());
        };
        let Some((left, rest)) = digits(&file[plus + 1..]) else {
            return Some(uncounted());
        };
        let (done, rest, done_written) = match rest.strip_prefix('-') {
            Some(r) => match digits(r) {
                Some((d, rest)) => (d, rest, true),
                None => return Some(uncounted()),
            },
            None => (0, rest, false),
        };
        if rest != suffix {
            return Some(uncounted());
        }
        let counter = Counter { left, done };
        let text = &file[plus + 1..file.len() - suffix.len()];
        let canonical = if done_written {
            format!("{left}-{done}")
        } else {
            left.to_string()
        };
        Some(EntryName {
            stem: file[..plus].to_owned(),
            counter: Some(counter),
            suffix: suffix.to_owned(),
            done_written,
            spelled: (text != canonical).then(|| (counter, text.to_owned())),
        })
    }

    /// A counted name as qimg installs it: `STEM+TRIES-0SUFFIX`.
    pub fn counted(stem: &str, tries: u32, suffix: &str) -> EntryName {
        EntryName {
            stem: stem.to_owned(),
            counter: Some(Counter {
                left: tries,
                done: 0,
            }),
            suffix: suffix.to_owned(),
            done_written: true,
            spelled: None,
        }
    }

    /// The name systemd-boot renames this file to when it boots it, if counted.
    pub fn next(&self) -> Option<EntryName> {
        self.counter.map(|c| EntryName {
            counter: Some(c.bumped()),
            done_written: true,
            spelled: None,
            ..self.clone()
        })
    }

    /// The name without a counter (what blessing renames the file to).
    pub fn blessed(&self) -> EntryName {
        EntryName {
            counter: None,
            done_written: false,
            spelled: None,
            ..self.clone()
        }
    }
}

impl fmt::Display for EntryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.counter {
            Some(c) if self.spelled.as_ref().is_some_and(|(was, _)| *was == c) => {
                let text = &self.spelled.as_ref().expect("checked").1;
                write!(f, "{}+{text}{}", self.stem, self.suffix)
            }
            Some(c) if self.done_written => {
                write!(f, "{}+{}-{}{}", self.stem, c.left, c.done, self.suffix)
            }
            Some(c) => write!(f, "{}+{}{}", self.stem, c.left, self.suffix),
            None => write!(f, "{}{}", self.stem, self.suffix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> EntryName {
        EntryName::parse(s, ".efi").unwrap()
    }

    #[test]
    fn the_series_systemd_documents() {
        // foobar+3.efi → foobar+2-1.efi → foobar+1-2.efi → foobar+0-3.efi → STOP
        let mut n = p("foobar+3.efi");
        assert_eq!(n.counter, Some(Counter { left: 3, done: 0 }));
        let mut seen = vec![];
        for _ in 0..4 {
            n = n.next().unwrap();
            seen.push(n.to_string());
        }
        assert_eq!(
            seen,
            [
                "foobar+2-1.efi",
                "foobar+1-2.efi",
                "foobar+0-3.efi",
                "foobar+0-4.efi"
            ]
        );
        assert!(p("foobar+0-3.efi").counter.unwrap().is_bad());
    }

    #[test]
    fn installed_names_keep_their_length_through_every_rename() {
        let mut n = EntryName::counted("qimg-a-7.1.0", 3, ".efi");
        assert_eq!(n.to_string(), "qimg-a-7.1.0+3-0.efi");
        let len = n.to_string().len();
        for _ in 0..3 {
            n = n.next().unwrap();
            assert_eq!(n.to_string().len(), len, "{n}");
        }
    }

    #[test]
    fn names_without_a_valid_counter_are_uncounted() {
        for name in [
            "slot-a.efi",
            "slot+.efi",
            "slot+x.efi",
            "slot+3-.efi",
            "slot+3-x.efi",
            "slot+3.efi.bak.efi",
            "slot+3a.efi",
            "slot+99999999999.efi",
            "a+3+b.efi",
        ] {
            let n = p(name);
            assert_eq!(n.counter, None, "{name}");
            assert_eq!(n.to_string(), name);
        }
        // The suffix must match exactly (systemd-boot compares case-sensitively).
        assert_eq!(
            EntryName::parse("slot+3.EFI", ".EFI")
                .unwrap()
                .counter
                .unwrap()
                .left,
            3
        );
        assert!(EntryName::parse("slot+3.EFI", ".efi").is_none());
        // The last '+' counts.
        assert_eq!(p("a+b+2-1.efi").stem, "a+b");
        assert_eq!(p("x+0.efi").counter, Some(Counter { left: 0, done: 0 }));
    }

    #[test]
    fn a_counter_with_leading_zeros_counts_and_prints_as_written() {
        // Found by the round-trip proptest: `+00` is 0 tries to the loader.
        let n = p("x+00.efi");
        assert_eq!(n.counter, Some(Counter { left: 0, done: 0 }));
        assert_eq!(n.to_string(), "x+00.efi");
        assert_eq!(p("x+03-01.efi").next().unwrap().to_string(), "x+2-2.efi");
    }

    #[test]
    fn blessing_drops_the_counter() {
        assert_eq!(p("slot-b+1-2.efi").blessed().to_string(), "slot-b.efi");
    }

    proptest! {
        #[test]
        fn format_parse_round_trip(stem in "[a-z0-9._+-]{1,20}", left in 0u32..=MAX_COUNTER, done in 0u32..=MAX_COUNTER) {
            let n = EntryName { stem, counter: Some(Counter { left, done }), suffix: ".efi".into(), done_written: true, spelled: None };
            let parsed = p(&n.to_string());
            prop_assert_eq!(parsed.counter, n.counter);
            prop_assert_eq!(parsed.to_string(), n.to_string());
        }

        #[test]
        fn any_name_round_trips_textually(name in "[a-zA-Z0-9+._-]{0,24}") {
            let file = format!("{name}.efi");
            prop_assert_eq!(p(&file).to_string(), file);
        }
    }
}
