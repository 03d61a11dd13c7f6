//! Randomized response on bits: the mechanisms, ε, and a fast exact Bernoulli sampler.
//!
//! Every mechanism outputs 1 with probability `P(1|1)` for an input 1 and `P(1|0)` for an input 0:
//!
//! | mechanism | `P(1\|1)`              | `P(1\|0)`          |
//! |-----------|------------------------|--------------------|
//! | `sue`     | e^(ε/2)/(e^(ε/2)+1)    | 1/(e^(ε/2)+1)      |
//! | `rr`      | e^ε/(e^ε+1)            | 1/(e^ε+1)          |
//! | `oue`     | 1/2                    | 1/(e^ε+1)          |
//! | `none`    | 1                      | 0                  |
//!
//! Sampling: each flip probability is rounded UP to a multiple of 2^-32 (never below the exact
//! value, so the realised privacy is never weaker than the stated ε; every flip probability is
//! ≤ 1/2, so more flipping is more noise). A flip mask for 64 elements is drawn at once from
//! 32-bit fixed point: walking the probability's binary digits from the least significant,
//! `m = digit ? m | r : m & r` with a fresh random word `r` each step leaves every bit of `m` set
//! with exactly that probability (one random bit per element per digit; a 1/2 costs one word).
//! Randomness comes from ChaCha20 seeded by the operating system ([`os_rng`]); [`seeded_rng`]
//! exists for tests and benchmarks only.

use std::fmt;
use std::str::FromStr;

use rand::{CryptoRng, SeedableRng};

use super::{Bits, CodecError};

/// The largest ε accepted: beyond it the 2^-32 resolution of the flip probabilities caps the
/// realised per-bit ε anyway (at ln(2^32 - 1) ≈ 22.2).
pub const EPSILON_MAX: f64 = 64.0;

/// The cryptographically secure generator behind randomized response.
pub type CodecRng = rand_chacha::ChaCha20Rng;

/// ChaCha20 seeded by the operating system: the default for anything that leaves a device.
pub fn os_rng() -> Result<CodecRng, CodecError> {
    CodecRng::try_from_os_rng().map_err(|e| CodecError::OsRng(e.to_string()))
}

/// ChaCha20 from a fixed seed: reproducible noise for tests and benchmarks, never for real uploads.
pub fn seeded_rng(seed: u64) -> CodecRng {
    CodecRng::seed_from_u64(seed)
}

/// A randomized-response mechanism (see the module docs for its probabilities).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    Sue,
    Rr,
    Oue,
    None,
}

impl Mechanism {
    /// Every mechanism, in the order of their names in `--help`.
    pub const ALL: [Mechanism; 4] = [Mechanism::Sue, Mechanism::Rr, Mechanism::Oue, Mechanism::None];

    /// The name used on the command line, in JSON and in the docs.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sue => "sue",
            Mechanism::Rr => "rr",
            Mechanism::Oue => "oue",
            Mechanism::None => "none",
        }
    }

    /// The code in the wire header.
    pub fn code(self) -> u8 {
        match self {
            Mechanism::None => 0,
            Mechanism::Sue => 1,
            Mechanism::Rr => 2,
            Mechanism::Oue => 3,
        }
    }

    /// The mechanism with this wire code.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.code() == code)
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, CodecError> {
        Self::ALL.into_iter().find(|m| m.name() == s).ok_or_else(|| CodecError::UnknownMechanism(s.to_string()))
    }
}

/// A mechanism with its ε, validated: `none` has no ε, the others have 0 < ε <= [`EPSILON_MAX`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Privacy {
    mechanism: Mechanism,
    epsilon: Option<f64>,
}

impl Privacy {
    /// Checks the pair: `none` takes no ε, every other mechanism needs one in range.
    pub fn new(mechanism: Mechanism, epsilon: Option<f64>) -> Result<Self, CodecError> {
        match (mechanism, epsilon) {
            (Mechanism::None, None) => {}
            (Mechanism::None, Some(epsilon)) => return Err(CodecError::EpsilonWithoutNoise { epsilon }),
            (_, None) => return Err(CodecError::MissingEpsilon { mechanism }),
            (_, Some(epsilon)) if !(epsilon > 0.0 && epsilon <= EPSILON_MAX) => {
                return Err(CodecError::EpsilonOutOfRange { epsilon });
            }
            (_, Some(_)) => {}
        }
        Ok(Self { mechanism, epsilon })
    }

    /// Binarization only.
    pub fn none() -> Self {
        Self { mechanism: Mechanism::None, epsilon: None }
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    pub fn epsilon(&self) -> Option<f64> {
        self.epsilon
    }

    /// The exact probability that the output bit differs from the input bit, from the definition.
    pub fn flip_prob(&self, input: bool) -> f64 {
        let flip = |eps: f64| 1.0 / (eps.exp() + 1.0);
        match (self.mechanism, self.epsilon) {
            (Mechanism::None, _) | (_, None) => 0.0,
            (Mechanism::Sue, Some(e)) => flip(e / 2.0),
            (Mechanism::Rr, Some(e)) => flip(e),
            (Mechanism::Oue, Some(e)) => if input { 0.5 } else { flip(e) },
        }
    }

    /// The exact probability that the output bit is 1 given the input bit.
    pub fn prob_one(&self, input: bool) -> f64 {
        if input { 1.0 - self.flip_prob(true) } else { self.flip_prob(false) }
    }

    /// The flip probabilities as sampled, in units of 2^-32: `(for a 0, for a 1)`, each the exact
    /// flip probability rounded up.
    pub fn flip_thresholds(&self) -> (u32, u32) {
        // Every flip probability is <= 1/2, so the result fits in u32 (at most 2^31).
        let to_fixed = |p: f64| (p * 4_294_967_296.0).ceil() as u32;
        (to_fixed(self.flip_prob(false)), to_fixed(self.flip_prob(true)))
    }

    /// Applies randomized response to every bit in place, drawing from a cryptographically
    /// secure generator.
    pub fn randomize<R: CryptoRng + ?Sized>(&self, bits: &mut Bits, rng: &mut R) {
        let (t0, t1) = self.flip_thresholds();
        if t0 == 0 && t1 == 0 {
            return;
        }
        let words = bits.words_mut();
        if t0 == t1 {
            for w in words.iter_mut() {
                *w ^= bernoulli_mask(t0, rng);
            }
        } else {
            for w in words.iter_mut() {
                let flip = (*w & bernoulli_mask(t1, rng)) | (!*w & bernoulli_mask(t0, rng));
                *w ^= flip;
            }
        }
        bits.clear_padding();
    }
}

/// 64 independent bits, each 1 with probability exactly `t / 2^32`.
fn bernoulli_mask<R: CryptoRng + ?Sized>(t: u32, rng: &mut R) -> u64 {
    if t == 0 {
        return 0;
    }
    // Invariant after digit j: each bit of m is 1 with probability (t mod 2^(j+1)) / 2^(j+1).
    // Digits below the lowest set one leave m = 0, so start there.
    let mut m = 0u64;
    for j in t.trailing_zeros()..32 {
        let r = rng.next_u64();
        m = if t >> j & 1 == 1 { m | r } else { m & r };
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_codes_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(m.name().parse::<Mechanism>().unwrap(), m);
            assert_eq!(m.to_string(), m.name());
            assert_eq!(Mechanism::from_code(m.code()), Some(m));
        }
        assert_eq!("SUE".parse::<Mechanism>(), Err(CodecError::UnknownMechanism("SUE".into())));
        assert_eq!(Mechanism::from_code(4), None);
    }

    #[test]
    fn epsilon_is_validated_against_the_mechanism() {
        assert!(Privacy::new(Mechanism::Sue, Some(2.0)).is_ok());
        assert!(Privacy::new(Mechanism::Rr, Some(EPSILON_MAX)).is_ok());
        assert!(Privacy::new(Mechanism::None, None).is_ok());
        for bad in [0.0, -1.0, EPSILON_MAX + 0.1, f64::NAN, f64::INFINITY] {
            assert!(matches!(Privacy::new(Mechanism::Oue, Some(bad)), Err(CodecError::EpsilonOutOfRange { .. })), "{bad}");
        }
        assert_eq!(Privacy::new(Mechanism::Rr, None), Err(CodecError::MissingEpsilon { mechanism: Mechanism::Rr }));
        assert_eq!(Privacy::new(Mechanism::None, Some(1.0)), Err(CodecError::EpsilonWithoutNoise { epsilon: 1.0 }));
    }

    #[test]
    fn probabilities_follow_the_definitions() {
        let e: f64 = 2.0;
        let sue = Privacy::new(Mechanism::Sue, Some(e)).unwrap();
        assert!((sue.prob_one(true) - (e / 2.0).exp() / ((e / 2.0).exp() + 1.0)).abs() < 1e-15);
        assert!((sue.prob_one(false) - (1.0 - sue.prob_one(true))).abs() < 1e-15);
        let rr = Privacy::new(Mechanism::Rr, Some(e)).unwrap();
        assert!((rr.prob_one(true) - e.exp() / (e.exp() + 1.0)).abs() < 1e-15);
        let oue = Privacy::new(Mechanism::Oue, Some(e)).unwrap();
        assert_eq!(oue.prob_one(true), 0.5);
        assert!((oue.prob_one(false) - 1.0 / (e.exp() + 1.0)).abs() < 1e-15);
        assert_eq!(Privacy::none().prob_one(true), 1.0);
        assert_eq!(Privacy::none().prob_one(false), 0.0);
    }

    #[test]
    fn fixed_point_flip_probabilities_round_toward_more_noise() {
        for m in [Mechanism::Sue, Mechanism::Rr, Mechanism::Oue] {
            for e in [0.01, 0.5, 1.0, 2.0, 4.0, 8.0, 30.0, EPSILON_MAX] {
                let p = Privacy::new(m, Some(e)).unwrap();
                let (t0, t1) = p.flip_thresholds();
                let scale = 4_294_967_296.0;
                for (t, exact) in [(t0, p.flip_prob(false)), (t1, p.flip_prob(true))] {
                    let sampled = f64::from(t) / scale;
                    assert!(sampled >= exact && sampled - exact <= 1.0 / scale, "{m} ε={e}: {sampled} vs {exact}");
                    assert!(t >= 1 && sampled <= 0.5);
                }
            }
        }
        assert_eq!(Privacy::none().flip_thresholds(), (0, 0));
    }

    #[test]
    fn bernoulli_mask_hits_its_probability() {
        let mut rng = seeded_rng(7);
        for t in [1u32 << 31, 1 << 30, 0x4567_89ab, 3 << 28] {
            let n = 20_000;
            let ones: u32 = (0..n).map(|_| bernoulli_mask(t, &mut rng).count_ones()).sum();
            let trials = f64::from(n) * 64.0;
            let p = f64::from(t) / 4_294_967_296.0;
            let sigma = (trials * p * (1.0 - p)).sqrt();
            assert!((f64::from(ones) - trials * p).abs() < 4.0 * sigma, "t={t:#x}: {ones} ones of {trials}");
        }
        assert_eq!(bernoulli_mask(0, &mut rng), 0);
    }

    #[test]
    fn none_leaves_bits_alone_and_noise_clears_padding() {
        let mut rng = seeded_rng(1);
        let mut bits = Bits::from_elements(&[1, 0, 1, 1, 0]).unwrap();
        Privacy::none().randomize(&mut bits, &mut rng);
        assert_eq!(bits.to_elements(), [1, 0, 1, 1, 0]);
        let mut zeros = Bits::zeros(70);
        let oue = Privacy::new(Mechanism::Oue, Some(0.01)).unwrap();
        for _ in 0..50 {
            oue.randomize(&mut zeros, &mut rng);
        }
        // Padding bits past 70 would make the packed form's last byte nonzero past bit 6.
        assert!(Bits::from_packed(&zeros.to_packed(), 70).is_ok());
    }
}
