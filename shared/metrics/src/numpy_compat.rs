//! The few NumPy routines the reference metrics are built from, reproduced operation for
//! operation so that results agree with pycocotools and YOLOv5 to the last bits, not just
//! to a tolerance: `np.add.reduce` (pairwise summation), `np.mean`, `np.linspace`,
//! `np.interp`, `np.trapezoid` (`np.trapz`) and `np.searchsorted(side="left")`.

/// Block size below which NumPy sums with eight interleaved accumulators (`PW_BLOCKSIZE`).
const PAIRWISE_BLOCK: usize = 128;

/// `np.add.reduce` of a contiguous float64 array: NumPy's pairwise summation.
pub(crate) fn sum(a: &[f64]) -> f64 {
    // NumPy starts a float reduction from the identity 0.0 and adds the pairwise sum to it.
    0.0 + pairwise_sum(a)
}

fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in a {
            res += v;
        }
        res
    } else if n <= PAIRWISE_BLOCK {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &a[i..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.mean` of a contiguous float64 array (NaN for an empty one, as NumPy).
pub(crate) fn mean(a: &[f64]) -> f64 {
    sum(a) / a.len() as f64
}

/// `np.linspace(start, stop, num)` with `endpoint=True`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut y: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    y[num - 1] = stop;
    y
}

/// `np.interp(x, xp, fp)` for one point, with NumPy's defaults `left=fp[0]`, `right=fp[-1]`.
/// `xp` must be non-decreasing and non-empty; repeated `xp` values are handled as NumPy does
/// (the last index `j` with `xp[j] <= x` is the left end of the segment).
pub(crate) fn interp(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    let last = xp.len() - 1;
    if x < xp[0] {
        return fp[0];
    }
    if x > xp[last] {
        return fp[last];
    }
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == last || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// `np.trapezoid(y, x)`: `sum(diff(x) * (y[1:] + y[:-1]) / 2.0)` with pairwise summation.
pub(crate) fn trapezoid(y: &[f64], x: &[f64]) -> f64 {
    let terms: Vec<f64> = (1..y.len()).map(|i| (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0).collect();
    sum(&terms)
}

/// `np.searchsorted(a, v, side="left")`: the first index `i` with `a[i] >= v`.
pub(crate) fn searchsorted_left(a: &[f64], v: f64) -> usize {
    a.partition_point(|&e| e < v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_differs_from_naive_sum_like_numpy() {
        // np.add.reduce([0.1] * 10) == 1.0 (pairwise) while a left-to-right sum gives 0.9999999999999999.
        let a = [0.1f64; 10];
        assert_eq!(sum(&a), 1.0);
        assert_eq!(a.iter().fold(0.0, |s, v| s + v), 0.9999999999999999);
    }

    #[test]
    fn linspace_matches_numpy_bits() {
        // np.linspace(.5, 0.95, 10)[8] == 0.8999999999999999 and [5] == 0.75.
        let t = linspace(0.5, 0.95, 10);
        assert_eq!(t[8], 0.8999999999999999);
        assert_eq!(t[1], 0.55);
        assert_eq!(t[5], 0.75);
        assert_eq!(t[9], 0.95);
        assert_eq!(linspace(0.0, 1.0, 101)[7], 0.07);
    }

    #[test]
    fn interp_with_repeated_abscissae_takes_the_last_equal_point() {
        let xp = [0.0, 0.5, 0.5, 1.0];
        let fp = [1.0, 0.8, 0.4, 0.0];
        assert_eq!(interp(0.5, &xp, &fp), 0.4);
        assert_eq!(interp(0.25, &xp, &fp), 0.9);
        assert_eq!(interp(0.75, &xp, &fp), 0.2);
        assert_eq!(interp(1.0, &xp, &fp), 0.0);
    }

    #[test]
    fn trapezoid_of_a_line() {
        let x = linspace(0.0, 1.0, 101);
        assert!((trapezoid(&x, &x) - 0.5).abs() < 1e-15);
    }

    #[test]
    fn searchsorted_left_finds_first_not_less() {
        assert_eq!(searchsorted_left(&[0.1, 0.2, 0.2, 0.3], 0.2), 1);
        assert_eq!(searchsorted_left(&[0.1, 0.2], 0.5), 2);
    }
}
