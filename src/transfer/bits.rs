//! A fixed-length bitmap (chunks held, chunks being fetched), 64 chunks a word.

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bits {
    words: Vec<u64>,
    len: u64,
}

impl Bits {
    /// `len` bits, all clear.
    pub fn new(len: u64) -> Bits {
        Bits { words: vec![0; len.div_ceil(64) as usize], len }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bit `i`; out of range reads as clear.
    pub fn get(&self, i: u64) -> bool {
        i < self.len && self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Set bit `i` (out of range: ignored).
    pub fn set(&mut self, i: u64, on: bool) {
        if i >= self.len {
            return;
        }
        let w = &mut self.words[(i / 64) as usize];
        if on {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Whether every bit is set.
    pub fn all(&self) -> bool {
        self.count() == self.len
    }

    /// The set bits, in order.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(wi, &w)| {
            let mut w = w;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let b = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(wi as u64 * 64 + b)
            })
        })
    }

    /// Bits that differ between `self` and `other` (same length), in order.
    pub fn diff<'a>(&'a self, other: &'a Bits) -> impl Iterator<Item = u64> + 'a {
        self.words.iter().zip(&other.words).enumerate().flat_map(|(wi, (&a, &b))| {
            let mut w = a ^ b;
            std::iter::from_fn(move || {
                if w == 0 {
                    return None;
                }
                let bit = w.trailing_zeros() as u64;
                w &= w - 1;
                Some(wi as u64 * 64 + bit)
            })
        })
    }

    /// Set every bit set in `other` (same length).
    pub fn or_assign(&mut self, other: &Bits) {
        self.words.iter_mut().zip(&other.words).for_each(|(a, b)| *a |= b);
    }

    /// `len` bits from booleans (missing ones clear, extra ones ignored).
    pub fn from_bools(len: u64, bits: impl IntoIterator<Item = bool>) -> Bits {
        let mut b = Bits::new(len);
        for (i, on) in bits.into_iter().enumerate().take(len as usize) {
            b.set(i as u64, on);
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_and_diff() {
        let mut a = Bits::new(130);
        for i in [0, 63, 64, 129] {
            a.set(i, true);
        }
        a.set(500, true);
        assert!(a.get(63) && a.get(64) && !a.get(1) && !a.get(500));
        assert_eq!(a.count(), 4);
        assert_eq!(a.ones().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        let mut b = a.clone();
        b.set(63, false);
        b.set(100, true);
        assert_eq!(a.diff(&b).collect::<Vec<_>>(), vec![63, 100]);
        assert!(!a.all());
        let full = Bits::from_bools(3, [true, true, true, false]);
        assert!(full.all() && full.len() == 3);
        a.clear();
        assert_eq!(a.count(), 0);
    }
}
