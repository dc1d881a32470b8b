//! The one HPKE suite sealed values use: RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, AES-256-GCM, through the `hpke` crate.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::{utils, TryCryptoRng, TryRng};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use std::convert::Infallible;

use zeroize::Zeroizing;

type Kem = X25519HkdfSha256;
type PrivateKey = <Kem as hpke::Kem>::PrivateKey;
type PublicKey = <Kem as hpke::Kem>::PublicKey;
type EncappedKey = <Kem as hpke::Kem>::EncappedKey;

/// The HPKE `info` of every sealed value: separates them from any other use of the keys.
pub const INFO: &[u8] = b"coffer sealed value v1";

/// Bytes of an encapsulated key (`Nenc`).
pub const ENC_LEN: usize = 32;
/// Bytes of the AES-256-GCM tag (`Nt`).
pub const TAG_LEN: usize = 16;

/// Why an HPKE operation failed; deliberately without detail, as HPKE gives none worth keeping.
#[derive(Debug)]
pub(crate) struct Failed;

/// Hands HPKE the ephemeral key's input keying material: encapsulation draws exactly `Nsk`
/// bytes and derives the ephemeral pair from them with `DeriveKeyPair`, so supplying them
/// here makes sealing reproducible for test vectors and lets the caller draw them from the OS
/// with an error instead of a panic.
struct EphemeralIkm<'a>(&'a [u8; 32]);

impl TryRng for EphemeralIkm<'_> {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        utils::next_word_via_fill(self)
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        utils::next_word_via_fill(self)
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Infallible> {
        for (d, s) in dest.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
        Ok(())
    }
}

// Only ever fed fresh OS randomness (or a test generator's fixed seed).
impl TryCryptoRng for EphemeralIkm<'_> {}

/// The public key of an X25519 private key (any 32 bytes are one: X25519 clamps them).
pub(crate) fn public_key(private: &[u8; 32]) -> [u8; 32] {
    // StaticSecret is zeroized on drop (x25519-dalek's `zeroize` feature).
    let secret = x25519_dalek::StaticSecret::from(*private);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

/// RFC 9180 `DeriveKeyPair(ikm)`: (private, public).
/// (The private key comes out clamped, as RFC 9180 §7.1.2 has `SerializePrivateKey` do.)
pub(crate) fn derive_key_pair(ikm: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let (sk, pk) = Kem::derive_keypair(ikm);
    let mut private = Zeroizing::new([0u8; 32]);
    sk.write_exact(&mut private[..]);
    (private, to_array(&pk))
}

/// Single-shot base-mode seal to `recipient` with the ephemeral key derived from `ikm_e`:
/// (enc, ciphertext || tag).
pub(crate) fn seal(
    recipient: &[u8; 32],
    ikm_e: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; ENC_LEN], Vec<u8>), Failed> {
    seal_with_info(INFO, recipient, ikm_e, aad, plaintext)
}

fn seal_with_info(
    info: &[u8],
    recipient: &[u8; 32],
    ikm_e: &[u8; 32],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<([u8; ENC_LEN], Vec<u8>), Failed> {
    let pk = PublicKey::from_bytes(recipient).map_err(|_| Failed)?;
    let (enc, ciphertext) = hpke::single_shot_seal_with_rng::<AesGcm256, HkdfSha256, Kem>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
        &mut EphemeralIkm(ikm_e),
    )
    .map_err(|_| Failed)?;
    Ok((to_array(&enc), ciphertext))
}

/// Single-shot base-mode open.
pub(crate) fn open(
    private: &[u8; 32],
    enc: &[u8; ENC_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    open_with_info(INFO, private, enc, aad, ciphertext)
}

fn open_with_info(
    info: &[u8],
    private: &[u8; 32],
    enc: &[u8; ENC_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, Failed> {
    let sk = PrivateKey::from_bytes(private).map_err(|_| Failed)?;
    let enc = EncappedKey::from_bytes(enc).map_err(|_| Failed)?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ciphertext,
        aad,
    )
    .map(Zeroizing::new)
    .map_err(|_| Failed)
}

fn to_array<T: Serializable>(value: &T) -> [u8; 32] {
    let mut out = [0u8; 32];
    value.write_exact(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex<const N: usize>(text: &str) -> [u8; N] {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    /// The CFRG HPKE test vector (the RFC 9180 vector set, test-vectors.json) for mode_base,
    /// DHKEM(X25519, HKDF-SHA256) (0x0020), HKDF-SHA256 (0x0001), AES-256-GCM (0x0002): RFC 9180
    /// Appendix A prints only the AES-128-GCM and ChaCha20Poly1305 variants of this KEM.
    #[test]
    fn matches_the_cfrg_vector_for_this_suite() {
        let info = hex::decode("4f6465206f6e2061204772656369616e2055726e").unwrap();
        let ikm_e: [u8; 32] =
            unhex("2cd7c601cefb3d42a62b04b7a9041494c06c7843818e0ce28a8f704ae7ab20f9");
        let ikm_r = hex::decode("dac33b0e9db1b59dbbea58d59a14e7b5896e9bdf98fad6891e99d1686492b9ee")
            .unwrap();
        let (sk_r, pk_r) = derive_key_pair(&ikm_r);
        // skRm 497b…333d, clamped: RFC 9180 §7.1.2 has SerializePrivateKey clamp X25519 keys
        // (hpke >= 0.15 does; the vector file predates that rule).
        assert_eq!(
            hex::encode(*sk_r),
            "487b4502664cfea5d5af0b39934dac72242a74f8480451e1aee7d6a53320337d"
        );
        assert_eq!(
            hex::encode(pk_r),
            "430f4b9859665145a6b1ba274024487bd66f03a2dd577d7753c68d7d7d00c00c"
        );
        let pt = hex::decode("4265617574792069732074727574682c20747275746820626561757479").unwrap();
        let aad = hex::decode("436f756e742d30").unwrap();
        let (enc, ct) = seal_with_info(&info, &pk_r, &ikm_e, &aad, &pt).unwrap();
        assert_eq!(
            hex::encode(enc),
            "6c93e09869df3402d7bf231bf540fadd35cd56be14f97178f0954db94b7fc256"
        );
        assert_eq!(
            hex::encode(&ct),
            "e5d84cd531cfb583096e7cfa9641bd3079cf3a91cda813c52deb5f512be9931980a41de125a925cdad859d5b7a"
        );
        assert_eq!(
            &open_with_info(&info, &sk_r, &enc, &aad, &ct).unwrap()[..],
            &pt[..]
        );
    }
}
