//! Code-point ranges as UTF-8 byte ranges, so that the automaton reads bytes
//! (and therefore any token, whole characters or not) while grammars speak
//! of characters.

/// Highest scalar value.
pub const MAX_CHAR: u32 = 0x10FFFF;
const SURROGATES: (u32, u32) = (0xD800, 0xDFFF);

/// The byte sequences that encode exactly the scalar values in `lo..=hi`:
/// each sequence is a list of inclusive byte ranges, one per byte.
pub fn sequences(lo: u32, hi: u32) -> Vec<Vec<(u8, u8)>> {
    let mut out = Vec::new();
    let hi = hi.min(MAX_CHAR);
    if lo > hi {
        return out;
    }
    // Surrogates are not characters: split around them.
    if lo <= SURROGATES.1 && hi >= SURROGATES.0 {
        if lo < SURROGATES.0 {
            by_length(lo, SURROGATES.0 - 1, &mut out);
        }
        if hi > SURROGATES.1 {
            by_length(SURROGATES.1 + 1, hi, &mut out);
        }
    } else {
        by_length(lo, hi, &mut out);
    }
    out
}

/// Splits at the values where the encoded length changes.
fn by_length(lo: u32, hi: u32, out: &mut Vec<Vec<(u8, u8)>>) {
    for (start, end) in [(0, 0x7F), (0x80, 0x7FF), (0x800, 0xFFFF), (0x1_0000, MAX_CHAR)] {
        let (a, b) = (lo.max(start), hi.min(end));
        if a <= b {
            split(a, b, out);
        }
    }
}

/// `lo` and `hi` encode to the same length. Splits the range until every
/// byte position of the encoding varies over one contiguous range
/// independently of the others.
fn split(lo: u32, hi: u32, out: &mut Vec<Vec<(u8, u8)>>) {
    let n = encode(lo).len();
    for i in 1..n {
        // The low `i` continuation bytes carry 6 bits each.
        let low = (1u32 << (6 * i)) - 1;
        if lo & !low != hi & !low {
            if lo & low != 0 {
                split(lo, lo | low, out);
                split((lo | low) + 1, hi, out);
                return;
            }
            if hi & low != low {
                split(lo, (hi & !low) - 1, out);
                split(hi & !low, hi, out);
                return;
            }
        }
    }
    let (a, b) = (encode(lo), encode(hi));
    out.push(a.iter().zip(&b).map(|(&x, &y)| (x, y)).collect());
}

fn encode(c: u32) -> Vec<u8> {
    let mut buf = [0u8; 4];
    char::from_u32(c).expect("a scalar value").encode_utf8(&mut buf).as_bytes().to_vec()
}

/// The complement of sorted, merged ranges within `0..=MAX_CHAR`.
pub fn complement(ranges: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut next = 0u32;
    for &(lo, hi) in ranges {
        if lo > next {
            out.push((next, lo - 1));
        }
        next = next.max(hi.saturating_add(1));
    }
    if next <= MAX_CHAR {
        out.push((next, MAX_CHAR));
    }
    out
}

/// Sorts ranges and merges those that touch or overlap.
pub fn merge(mut ranges: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
    ranges.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
    for (lo, hi) in ranges {
        match out.last_mut() {
            Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(seqs: &[Vec<(u8, u8)>], bytes: &[u8]) -> bool {
        seqs.iter().any(|s| s.len() == bytes.len() && s.iter().zip(bytes).all(|(&(a, b), &x)| a <= x && x <= b))
    }

    #[test]
    fn every_character_in_a_range_and_none_outside_is_encoded() {
        for (lo, hi) in
            [(0x41, 0x5A), (0x70, 0x900), (0x7FF, 0x800), (0xD000, 0xE100), (0xFFF0, 0x10FFF), (0, MAX_CHAR)]
        {
            let seqs = sequences(lo, hi);
            let probe =
                (0..=MAX_CHAR).step_by(97).chain([lo, hi, lo.saturating_sub(1), hi + 1, 0x7F, 0x80, 0x7FF, 0x800]);
            for c in probe {
                let Some(ch) = char::from_u32(c) else { continue };
                let mut buf = [0u8; 4];
                let inside = (lo..=hi).contains(&c);
                assert_eq!(matches(&seqs, ch.encode_utf8(&mut buf).as_bytes()), inside, "{c:#x} in {lo:#x}..={hi:#x}");
            }
        }
    }

    #[test]
    fn complement_and_merge() {
        assert_eq!(merge(vec![(5, 9), (1, 3), (4, 4), (20, 30)]), [(1, 9), (20, 30)]);
        assert_eq!(complement(&[(0, 9), (20, 30)]), [(10, 19), (31, MAX_CHAR)]);
        assert_eq!(complement(&[(0, MAX_CHAR)]), []);
    }
}
