//! Randomized response keeps and flips bits with exactly the probabilities issue 3 defines:
//! empirical rates within 4σ of p and q for every mechanism and ε ∈ {0.5, 1, 2, 4, 8}
//! (fixed seeds, so the outcome is deterministic).

use mistnet_codec::{
    Bits, DecodeLimits, EncodeParams, Encoding, FrontHash, Mechanism, Privacy, decode, encode, seeded_rng,
};

const EPSILONS: [f64; 5] = [0.5, 1.0, 2.0, 4.0, 8.0];

/// The definitions, written out independently of the library.
fn expected_prob_one(mechanism: Mechanism, eps: f64, input: bool) -> f64 {
    let e = eps.exp();
    let h = (eps / 2.0).exp();
    match (mechanism, input) {
        (Mechanism::Sue, true) => h / (h + 1.0),
        (Mechanism::Sue, false) => 1.0 / (h + 1.0),
        (Mechanism::Rr, true) => e / (e + 1.0),
        (Mechanism::Rr, false) => 1.0 / (e + 1.0),
        (Mechanism::Oue, true) => 0.5,
        (Mechanism::Oue, false) => 1.0 / (e + 1.0),
        (Mechanism::None, b) => f64::from(u8::from(b)),
    }
}

/// |ones − n·p| within 4 binomial standard deviations.
fn assert_within_4_sigma(ones: usize, n: usize, p: f64, what: &str) {
    let (n, ones) = (n as f64, ones as f64);
    let sigma = (n * p * (1.0 - p)).sqrt();
    let z = (ones - n * p) / sigma;
    assert!(z.abs() < 4.0, "{what}: {ones} ones of {n}, expected {:.1} (p = {p:.6}), z = {z:.2}", n * p);
}

#[test]
fn keep_and_flip_rates_match_p_and_q() {
    let n = 200_000; // per input value
    let input: Vec<u8> = (0..2 * n).map(|i| u8::from(i % 2 == 0)).collect();
    for (k, mechanism) in [Mechanism::Sue, Mechanism::Rr, Mechanism::Oue].into_iter().enumerate() {
        for (j, eps) in EPSILONS.into_iter().enumerate() {
            let privacy = Privacy::new(mechanism, Some(eps)).unwrap();
            let mut bits = Bits::from_elements(&input).unwrap();
            privacy.randomize(&mut bits, &mut seeded_rng(1000 + 10 * k as u64 + j as u64));
            let out = bits.to_elements();
            let ones_from_one = out.iter().step_by(2).filter(|&&b| b == 1).count();
            let ones_from_zero = out.iter().skip(1).step_by(2).filter(|&&b| b == 1).count();
            let (p, q) = (expected_prob_one(mechanism, eps, true), expected_prob_one(mechanism, eps, false));
            assert_within_4_sigma(ones_from_one, n, p, &format!("{mechanism} ε={eps}: P(1|1)"));
            assert_within_4_sigma(ones_from_zero, n, q, &format!("{mechanism} ε={eps}: P(1|0)"));
            assert!((privacy.prob_one(true) - p).abs() < 1e-12 && (privacy.prob_one(false) - q).abs() < 1e-12);
        }
    }
}

#[test]
fn none_is_exact() {
    let input: Vec<u8> = (0..1000).map(|i| u8::from(i % 3 == 0)).collect();
    let mut bits = Bits::from_elements(&input).unwrap();
    Privacy::none().randomize(&mut bits, &mut seeded_rng(0));
    assert_eq!(bits.to_elements(), input);
}

#[test]
fn the_encoder_applies_the_noise() {
    // All-positive features: every bit is 1 before noise, so the fraction of ones is P(1|1).
    let n = 64 * 64 * 16;
    let values = vec![1.0f32; n];
    for mechanism in [Mechanism::Sue, Mechanism::Rr, Mechanism::Oue] {
        let eps = 1.0;
        let params = EncodeParams {
            privacy: Privacy::new(mechanism, Some(eps)).unwrap(),
            encoding: Encoding::Packed,
            zstd_level: Some(1),
            cut: 2,
            front_hash: FrontHash([0; 32]),
        };
        let msg = encode(&values, &[16, 64, 64], &params, &mut seeded_rng(9)).unwrap();
        let ones = decode(&msg, &DecodeLimits::default()).unwrap().bits.count_ones();
        assert_within_4_sigma(ones, n, expected_prob_one(mechanism, eps, true), &format!("{mechanism} via encode"));
    }
}

#[test]
fn different_seeds_give_different_noise_and_the_same_seed_the_same() {
    let privacy = Privacy::new(Mechanism::Rr, Some(1.0)).unwrap();
    let draw = |seed| {
        let mut b = Bits::zeros(4096);
        privacy.randomize(&mut b, &mut seeded_rng(seed));
        b
    };
    assert_eq!(draw(5), draw(5));
    assert_ne!(draw(5), draw(6));
    let mut os = mistnet_codec::os_rng().unwrap();
    let mut a = Bits::zeros(4096);
    let mut b = Bits::zeros(4096);
    privacy.randomize(&mut a, &mut os);
    privacy.randomize(&mut b, &mut os);
    assert_ne!(a, b);
}
