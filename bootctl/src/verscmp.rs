//! systemd's version comparison (`strverscmp_improved`, the UAPI version format),
//! which systemd-boot uses to order entries by version and by id.
//!
//! Strings split into numeric and alphabetic segments; characters other than
//! ASCII letters, digits and `~ - ^ .` are dropped and act as separators. A segment
//! prefixed with `~` is older than anything, even the end of the string; `-`
//! (version/release separator) is older than `^` (patch), which is older than `.`,
//! which is older than no prefix. Numeric segments compare by value and are newer
//! than alphabetic ones; alphabetic segments compare bytewise, longer is newer.
//! At the end of one string, the longer string is newer.

use std::cmp::Ordering;

fn valid(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'~' | b'-' | b'^' | b'.')
}

/// Compares two version strings; `Greater` means `a` is newer. Empty strings compare
/// bytewise (an empty version is older than any other).
pub fn compare(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.is_empty() || b.is_empty() {
        return a.cmp(b);
    }
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0);
    let (mut i, mut j) = (0usize, 0usize);
    loop {
        while i < a.len() && !valid(a[i]) {
            i += 1;
        }
        while j < b.len() && !valid(b[j]) {
            j += 1;
        }
        // '~': a pre-release is older than everything, even the end.
        if at(a, i) == b'~' || at(b, j) == b'~' {
            let r = (at(a, i) != b'~').cmp(&(at(b, j) != b'~'));
            if r != Ordering::Equal {
                return r;
            }
            i += 1;
            j += 1;
        }
        // At the end of either string, the longer one is newer.
        if at(a, i) == 0 || at(b, j) == 0 {
            return at(a, i).cmp(&at(b, j));
        }
        for sep in [b'-', b'^', b'.'] {
            if at(a, i) == sep || at(b, j) == sep {
                let r = (at(a, i) != sep).cmp(&(at(b, j) != sep));
                if r != Ordering::Equal {
                    return r;
                }
                i += 1;
                j += 1;
            }
        }
        let (ii, jj);
        if at(a, i).is_ascii_digit() || at(b, j).is_ascii_digit() {
            while at(a, i) == b'0' {
                i += 1;
            }
            while at(b, j) == b'0' {
                j += 1;
            }
            let mut x = i;
            while at(a, x).is_ascii_digit() {
                x += 1;
            }
            let mut y = j;
            while at(b, y).is_ascii_digit() {
                y += 1;
            }
            // Longer numbers are bigger; equal lengths compare as text.
            let r = (x - i).cmp(&(y - j));
            if r != Ordering::Equal {
                return r;
            }
            let r = a[i..x].cmp(&b[j..y]);
            if r != Ordering::Equal {
                return r;
            }
            (ii, jj) = (x, y);
        } else {
            let mut x = i;
            while at(a, x).is_ascii_alphabetic() {
                x += 1;
            }
            let mut y = j;
            while at(b, y).is_ascii_alphabetic() {
                y += 1;
            }
            let n = (x - i).min(y - j);
            let r = a[i..i + n].cmp(&b[j..j + n]);
            if r != Ordering::Equal {
                return r;
            }
            let r = (x - i).cmp(&(y - j));
            if r != Ordering::Equal {
                return r;
            }
            (ii, jj) = (x, y);
        }
        i = ii;
        j = jj;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_order() {
        // The ordering listed in systemd's own documentation of the function.
        let ordered = [
            "122.1",
            "123~rc1-1",
            "123",
            "123-a",
            "123-a.1",
            "123-1",
            "123-1.1",
            "123^post1",
            "123.a-1",
            "123.1-1",
            "123a-1",
            "124-1",
        ];
        for (x, a) in ordered.iter().enumerate() {
            for (y, b) in ordered.iter().enumerate() {
                assert_eq!(compare(a, b), x.cmp(&y), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn versions_and_entry_ids() {
        use Ordering::*;
        assert_eq!(compare("7.10.0", "7.9.3"), Greater);
        assert_eq!(compare("0007", "7"), Equal);
        assert_eq!(compare("1.0", "1.0.0"), Less);
        assert_eq!(compare("", "1"), Less);
        assert_eq!(compare("", ""), Equal);
        // '+' is not a version character: it only separates.
        assert_eq!(compare("slot-b+3.efi", "slot-b.efi"), Greater);
        assert_eq!(compare("slot-b.efi", "slot-a.efi"), Greater);
        assert_eq!(compare("qimg-7.10.0+3-0.efi", "qimg-7.9.0.efi"), Greater);
        assert_eq!(compare("123_a", "123a"), Equal);
        assert_eq!(compare("a_b", "ab"), Less); // segments "a" vs "ab", as in C
    }

    #[test]
    fn antisymmetric_on_samples() {
        let s = [
            "1", "1.0", "1~rc", "1-1", "1^p", "a", "1a", "", "~", "1.a", "v2", "2.0.1",
        ];
        for a in s {
            for b in s {
                assert_eq!(compare(a, b), compare(b, a).reverse(), "{a} {b}");
            }
        }
    }
}
