//! PKCE (RFC 7636) and `state` values.
//!
//! The verifier is drawn from a caller-supplied CSPRNG (so tests can fix it) and the
//! challenge is always S256: Spotify requires it for public clients and "plain"
//! offers no protection against an intercepted code.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::secret::CodeVerifier;

/// Length of the verifiers we generate (RFC 7636 allows 43–128).
pub const VERIFIER_LEN: usize = 64;

const UNRESERVED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";

/// A source of cryptographically secure random bytes (the caller's CSPRNG;
/// injected so that this crate stays free of I/O and tests can fix it).
pub trait RandomSource {
    /// Fills `buf` with random bytes.
    fn fill(&mut self, buf: &mut [u8]);
}

impl<F: FnMut(&mut [u8])> RandomSource for F {
    fn fill(&mut self, buf: &mut [u8]) {
        self(buf)
    }
}

/// Draws a fresh verifier of [`VERIFIER_LEN`] unreserved characters.
pub fn new_verifier(rng: &mut impl RandomSource) -> CodeVerifier {
    CodeVerifier::new(random_unreserved(rng, VERIFIER_LEN))
}

/// Draws a `state` value: 32 unreserved characters (≈190 bits).
pub fn new_state(rng: &mut impl RandomSource) -> String {
    random_unreserved(rng, 32)
}

/// `BASE64URL(SHA256(verifier))` without padding.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Whether `v` is a syntactically valid verifier (43–128 unreserved characters).
pub fn is_valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len()) && v.bytes().all(|b| UNRESERVED.contains(&b))
}

fn random_unreserved(rng: &mut impl RandomSource, len: usize) -> String {
    // Rejection sampling keeps the distribution uniform over the 66 characters.
    let mut out = String::with_capacity(len);
    let limit = 256 - (256 % UNRESERVED.len());
    while out.len() < len {
        let mut buf = [0u8; 64];
        rng.fill(&mut buf);
        for b in buf {
            if (b as usize) < limit && out.len() < len {
                out.push(UNRESERVED[b as usize % UNRESERVED.len()] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::{OsRng, TryRngCore};

    fn os(buf: &mut [u8]) {
        OsRng.try_fill_bytes(buf).expect("os rng");
    }

    #[test]
    fn rfc7636_appendix_b_vector() {
        assert_eq!(
            s256_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifiers_are_valid_and_fresh() {
        let mut rng = os;
        let a = new_verifier(&mut rng);
        let b = new_verifier(&mut rng);
        assert!(is_valid_verifier(a.expose()));
        assert_ne!(a.expose(), b.expose());
        assert_eq!(new_state(&mut rng).len(), 32);
    }

    #[test]
    fn invalid_verifiers_are_rejected() {
        assert!(!is_valid_verifier("short"));
        assert!(!is_valid_verifier(&"a".repeat(129)));
        assert!(!is_valid_verifier(&format!("{}+", "a".repeat(50))));
    }
}
