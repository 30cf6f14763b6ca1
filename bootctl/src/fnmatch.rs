//! Glob patterns as systemd-boot matches them against entry ids (`efi_fnmatch`):
//! `*` any run, `?` one character, `[...]` a set with ranges (`]` first is literal,
//! `-` first or last is literal, ranges do not chain), `\` escapes. There is no
//! negation (`[!a]` matches `!` or `a`) and `/` and leading dots are ordinary
//! characters. Callers fold case first: systemd-boot lowercases both the pattern
//! and the ids.

/// Matches one pattern character (or set) at `p` against `c`; returns the length of
/// the pattern item consumed, or `None` on mismatch or a malformed set.
fn item(p: &[char], c: char) -> Option<(bool, usize)> {
    match p[0] {
        '?' => Some((true, 1)),
        '\\' => {
            let lit = *p.get(1)?;
            Some((lit == c, 2))
        }
        '[' => {
            let mut k = 1;
            let mut matched = false;
            let mut first = true;
            let mut can_range = true;
            loop {
                let ch = *p.get(k)?;
                if ch == '\\' {
                    let lit = *p.get(k + 1)?;
                    matched |= lit == c;
                    can_range = true;
                    k += 2;
                    first = false;
                    continue;
                }
                if ch == ']' && !first {
                    return Some((matched, k + 1));
                }
                if ch == '-' && can_range && !first && p.get(k + 1) != Some(&']') {
                    let low = p[k - 1];
                    let mut hi_at = k + 1;
                    if p.get(hi_at) == Some(&'\\') {
                        hi_at += 1;
                    }
                    let high = *p.get(hi_at)?;
                    matched |= low <= c && c <= high;
                    can_range = false;
                    k = hi_at + 1;
                    first = false;
                    continue;
                }
                matched |= ch == c;
                can_range = true;
                k += 1;
                first = false;
            }
        }
        lit => Some((lit == c, 1)),
    }
}

/// True when `pattern` matches all of `text`.
pub fn matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matching with one backtrack point for the last `*`: linear in
    // practice and never exponential.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi + 1, ti));
            pi += 1;
            continue;
        }
        if pi < p.len()
            && let Some((true, n)) = item(&p[pi..], t[ti])
        {
            pi += n;
            ti += 1;
            continue;
        }
        match star {
            Some((sp, st)) => {
                pi = sp;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn patterns() {
        let yes = [
            ("slot-*", "slot-b+3-0.efi"),
            ("slot-b+3-0.efi", "slot-b+3-0.efi"),
            ("*", ""),
            ("*.efi", "a.efi"),
            ("a?c", "abc"),
            ("[ab]x", "bx"),
            ("[a-c]x", "bx"),
            ("[]]", "]"),
            ("[a-]", "-"),
            ("[!a]", "!"),
            ("\\*", "*"),
            ("q*-7.*.efi", "qimg-a-7.1.0.efi"),
            ("*a*b*", "xxaxxbxx"),
        ];
        let no = [
            ("slot-b.efi", "slot-b+3-0.efi"),
            ("slot-b", "slot-b.efi"),
            ("a?c", "ac"),
            ("[ab]x", "cx"),
            ("[!a]", "b"),
            ("[a-c-f]", "e"),
            ("\\*", "a"),
            ("[abc", "a"),
            ("*a*b", "xxbxxa"),
        ];
        for (p, t) in yes {
            assert!(matches(p, t), "{p} should match {t}");
        }
        for (p, t) in no {
            assert!(!matches(p, t), "{p} should not match {t}");
        }
    }
}
