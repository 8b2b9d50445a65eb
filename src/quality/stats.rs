//! Distribution drift tests with Evidently's defaults (reference §8.4): the two-sample
//! Kolmogorov–Smirnov test for references of up to 1000 values, the Wasserstein distance
//! normalised by the reference's standard deviation above that, and the two-proportion
//! z statistic for rates.

/// Evidently's KS threshold: drift when p ≤ 0.05.
pub const KS_P: f64 = 0.05;
/// Evidently's normalised Wasserstein threshold.
pub const WASSERSTEIN: f64 = 0.1;
/// Reference size up to which KS is used.
pub const KS_MAX_REFERENCE: usize = 1000;

/// Whether `current` drifted from `reference`, by Evidently's default test for its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drift {
    /// The test's name.
    pub test: &'static str,
    /// Its statistic: the p-value for KS, the normalised distance for Wasserstein.
    pub value: f64,
    /// The threshold.
    pub threshold: f64,
    /// Drifted.
    pub drifted: bool,
    /// Normalised Wasserstein distance (the effect size, whatever the test).
    pub distance: f64,
}

/// Compares two samples (each sorted in place).
pub fn drift(reference: &mut [f64], current: &mut [f64]) -> Option<Drift> {
    if reference.is_empty() || current.is_empty() {
        return None;
    }
    reference.sort_by(f64::total_cmp);
    current.sort_by(f64::total_cmp);
    let distance = wasserstein(reference, current) / std_dev(reference).max(0.001);
    Some(if reference.len() <= KS_MAX_REFERENCE {
        let p = ks_p(reference, current);
        Drift {
            test: "ks",
            value: p,
            threshold: KS_P,
            drifted: p <= KS_P,
            distance,
        }
    } else {
        Drift {
            test: "wasserstein",
            value: distance,
            threshold: WASSERSTEIN,
            drifted: distance >= WASSERSTEIN,
            distance,
        }
    })
}

/// The KS statistic D of two sorted samples.
pub fn ks_d(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0, 0, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    d
}

/// The asymptotic two-sided p-value of the KS test (Numerical Recipes' `probks` with
/// Stephens' small-sample correction).
pub fn ks_p(a: &[f64], b: &[f64]) -> f64 {
    let d = ks_d(a, b);
    let (n, m) = (a.len() as f64, b.len() as f64);
    let en = (n * m / (n + m)).sqrt();
    let lambda = (en + 0.12 + 0.11 / en) * d;
    if lambda < 1e-3 {
        return 1.0;
    }
    let mut sum = 0.0;
    let mut sign = 1.0;
    for j in 1..=100 {
        let term = sign * (-2.0 * f64::from(j * j) * lambda * lambda).exp();
        sum += term;
        if term.abs() < 1e-10 {
            break;
        }
        sign = -sign;
    }
    (2.0 * sum).clamp(0.0, 1.0)
}

/// The Wasserstein-1 distance between two sorted samples: the area between their
/// empirical CDFs.
pub fn wasserstein(a: &[f64], b: &[f64]) -> f64 {
    let (n, m) = (a.len() as f64, b.len() as f64);
    let mut all: Vec<f64> = a.iter().chain(b).copied().collect();
    all.sort_by(f64::total_cmp);
    let (mut i, mut j, mut area) = (0, 0, 0.0);
    for w in all.windows(2) {
        while i < a.len() && a[i] <= w[0] {
            i += 1;
        }
        while j < b.len() && b[j] <= w[0] {
            j += 1;
        }
        area += (i as f64 / n - j as f64 / m).abs() * (w[1] - w[0]);
    }
    area
}

fn std_dev(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt()
}

/// The one-sided two-proportion z statistic of `k1/n1` above `k0/n0` (pooled variance).
pub fn z_above(k1: f64, n1: f64, k0: f64, n0: f64) -> f64 {
    if n1 <= 0.0 || n0 <= 0.0 {
        return 0.0;
    }
    let (p1, p0) = (k1 / n1, k0 / n0);
    let p = (k1 + k0) / (n1 + n0);
    let se = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n0)).sqrt();
    if se == 0.0 {
        return if p1 > p0 { f64::INFINITY } else { 0.0 };
    }
    (p1 - p0) / se
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::splitmix::SplitMix;

    fn sample(rng: &mut SplitMix, n: usize, shift: f64) -> Vec<f64> {
        (0..n).map(|_| rng.unit() * 10.0 + shift).collect()
    }

    #[test]
    fn ks_tells_a_shift_from_noise() {
        let mut rng = SplitMix::new(3);
        let mut reference = sample(&mut rng, 400, 0.0);
        let mut same = sample(&mut rng, 100, 0.0);
        let mut shifted = sample(&mut rng, 100, 4.0);
        let quiet = drift(&mut reference, &mut same).unwrap();
        assert_eq!(quiet.test, "ks");
        assert!(!quiet.drifted, "{quiet:?}");
        let moved = drift(&mut reference, &mut shifted).unwrap();
        assert!(moved.drifted && moved.value < 1e-6, "{moved:?}");
        assert!(moved.distance > 1.0, "{moved:?}");
    }

    #[test]
    fn large_references_use_normalised_wasserstein() {
        let mut rng = SplitMix::new(4);
        let mut reference = sample(&mut rng, 1500, 0.0);
        let mut shifted = sample(&mut rng, 200, 1.5);
        let d = drift(&mut reference, &mut shifted).unwrap();
        assert_eq!(d.test, "wasserstein");
        // A shift of 1.5 on a uniform(0, 10) (σ ≈ 2.9) is about 0.5σ.
        assert!(d.drifted && (0.2..0.8).contains(&d.value), "{d:?}");
        assert!((wasserstein(&[0.0, 1.0], &[0.0, 1.0])).abs() < 1e-12);
        assert!((wasserstein(&[0.0], &[2.0]) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn two_proportion_z() {
        assert!(z_above(30.0, 100.0, 20.0, 1000.0) > 5.0);
        assert!(z_above(3.0, 100.0, 20.0, 1000.0) < 1.0);
        assert_eq!(z_above(0.0, 0.0, 1.0, 10.0), 0.0);
    }
}
