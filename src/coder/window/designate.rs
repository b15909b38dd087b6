//! The designation order and the codes already designated in a window (the `window` module
//! docs, "Termination rule").

use crate::coder::max_tz;

/// Whether `x` comes before `y` in the designation order: more trailing zeros (0 has 128), then
/// smaller value.
#[inline(always)]
fn precedes(x: u128, y: u128) -> bool {
    let (tx, ty) = (x.trailing_zeros(), y.trailing_zeros());
    tx > ty || (tx == ty && x < y)
}

/// Codes designated to shorter prefixes of the window, sorted by value; codes that left the
/// window's code range are dropped as it narrows (ranges only shrink along a window).
#[derive(Clone, Debug, Default)]
pub(super) struct Taken(Vec<u128>);

impl Taken {
    /// The taken codes in `[cmin, cmax]`.
    #[inline(always)]
    pub(super) fn within(&self, cmin: u128, cmax: u128) -> (usize, usize) {
        let v = &self.0;
        if v.len() <= 8 {
            let i = v.iter().take_while(|&&t| t < cmin).count();
            let j = i + v[i..].iter().take_while(|&&t| t <= cmax).count();
            (i, j)
        } else {
            let i = v.partition_point(|&t| t < cmin);
            (i, i + v[i..].partition_point(|&t| t <= cmax))
        }
    }

    /// The designated code of a prefix whose codes are `[cmin, cmax]`: the first free code in
    /// the designation order, i.e. the best of the gaps' own first codes ([`max_tz`]). Cost: one
    /// step per taken code in range.
    #[inline(always)]
    pub(super) fn designate(&self, cmin: u128, cmax: u128, (i, j): (usize, usize)) -> Option<u128> {
        let taken = &self.0[i..j];
        let first = max_tz(cmin, cmax);
        let free = if taken.len() <= 8 {
            !taken.contains(&first)
        } else {
            taken.binary_search(&first).is_err()
        };
        if free {
            Some(first)
        } else {
            Self::best_gap(cmin, cmax, taken)
        }
    }

    /// The first code in the designation order among the gaps between the `taken` codes
    /// (sorted, inside `[cmin, cmax]`): each gap's own first code is its [`max_tz`].
    #[inline(never)]
    fn best_gap(cmin: u128, cmax: u128, taken: &[u128]) -> Option<u128> {
        let mut best: Option<u128> = None;
        let mut consider = |c: u128| {
            if best.is_none_or(|b| precedes(c, b)) {
                best = Some(c);
            }
        };
        let mut lo = Some(cmin);
        for &x in taken {
            if let Some(l) = lo {
                if x > l {
                    consider(max_tz(l, x - 1));
                }
            }
            lo = x.checked_add(1);
        }
        if let Some(l) = lo {
            if l <= cmax {
                consider(max_tz(l, cmax));
            }
        }
        best
    }

    /// Forget every code (a new window), keeping the buffer.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Keep only the codes in `[i, j)` and add `code` (absent).
    #[inline(always)]
    pub(super) fn narrow_insert(&mut self, (i, j): (usize, usize), code: Option<u128>) {
        self.0.truncate(j);
        if i > 0 {
            self.0.drain(..i);
        }
        if let Some(c) = code {
            let at = self.0.iter().take_while(|&&t| t < c).count();
            self.0.insert(at, c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn designate(cmin: u128, cmax: u128, taken: &[u128]) -> Option<u128> {
        let mut t = Taken::default();
        for &c in taken {
            if !t.0.contains(&c) {
                t.narrow_insert((0, t.0.len()), Some(c));
            }
        }
        let span = t.within(cmin, cmax);
        t.designate(cmin, cmax, span)
    }

    #[test]
    fn designate_order() {
        assert_eq!(designate(0, 10, &[]), Some(0));
        assert_eq!(designate(3, 10, &[]), Some(8));
        assert_eq!(designate(3, 10, &[8]), Some(4));
        assert_eq!(designate(3, 10, &[4, 8]), Some(6));
        assert_eq!(designate(3, 10, &[4, 6, 8]), Some(10));
        assert_eq!(designate(3, 10, &[4, 6, 8, 10]), Some(3));
        assert_eq!(designate(3, 10, &[3, 4, 6, 8, 10]), Some(5));
        assert_eq!(designate(3, 10, &[3, 4, 5, 6, 8, 10]), Some(7));
        assert_eq!(designate(3, 10, &[3, 4, 5, 6, 7, 8, 10]), Some(9));
        assert_eq!(designate(3, 10, &[3, 4, 5, 6, 7, 8, 9, 10]), None);
        assert_eq!(designate(3, 4, &[3, 4]), None);
        // Codes outside the range do not count.
        assert_eq!(designate(3, 10, &[0, 1, 2, 16, 12, 8]), Some(4));
        assert_eq!(designate(0, u128::MAX, &[0]), Some(1 << 127));
        assert_eq!(designate(0, u128::MAX, &[0, 1 << 127]), Some(1 << 126));
        assert_eq!(designate(u128::MAX, u128::MAX, &[]), Some(u128::MAX));
        assert_eq!(
            designate(u128::MAX - 1, u128::MAX, &[u128::MAX - 1]),
            Some(u128::MAX)
        );
        assert_eq!(
            designate(u128::MAX - 1, u128::MAX, &[u128::MAX - 1, u128::MAX]),
            None
        );
    }

    /// The designated code agrees with a brute-force scan of the order.
    #[test]
    fn designate_matches_brute_force() {
        let mut s = 0x853C_49E6_748F_EA9Bu64;
        let mut next = |n: u64| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s % n
        };
        for _ in 0..3000 {
            let cmin = next(200) as u128;
            let cmax = cmin + next(60) as u128;
            let taken: Vec<u128> = (0..next(40)).map(|_| next(270) as u128).collect();
            let mut uniq = taken.clone();
            uniq.sort();
            uniq.dedup();
            let mut order: Vec<u128> = (cmin..=cmax).collect();
            order.sort_by_key(|&c| (128 - c.trailing_zeros(), c));
            let want = order.into_iter().find(|c| !uniq.contains(c));
            assert_eq!(
                designate(cmin, cmax, &uniq),
                want,
                "{cmin}..={cmax} {uniq:?}"
            );
        }
    }
}
