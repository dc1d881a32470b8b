//! The one HPKE suite sealed values use: RFC 9180 base mode, DHKEM(X25519, HKDF-SHA256),
//! HKDF-SHA256, AES-256-GCM, through the `hpke` crate.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::rand_core::{CryptoRng, RngCore};
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::{Zeroize, Zeroizing};

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

/// Hands HPKE the ephemeral key's input keying material: `Kem::encap` draws exactly `Nsk`
/// bytes and derives the ephemeral pair from them with `DeriveKeyPair`, so supplying them
/// here makes sealing reproducible for test vectors and lets the caller draw them from the OS
/// with an error instead of a panic.
struct EphemeralIkm<'a>(&'a [u8; 32]);

impl RngCore for EphemeralIkm<'_> {
    fn next_u32(&mut self) -> u32 {
        hpke::rand_core::impls::next_u32_via_fill(self)
    }

    fn next_u64(&mut self) -> u64 {
        hpke::rand_core::impls::next_u64_via_fill(self)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        for (d, s) in dest.iter_mut().zip(self.0.iter().cycle()) {
            *d = *s;
        }
    }
}

// Only ever fed fresh OS randomness (or a test generator's fixed seed).
impl CryptoRng for EphemeralIkm<'_> {}

/// The public key of an X25519 private key.
pub(crate) fn public_key(private: &[u8; 32]) -> Result<[u8; 32], Failed> {
    let sk = PrivateKey::from_bytes(private).map_err(|_| Failed)?;
    Ok(to_array(&Kem::sk_to_pk(&sk)))
}

/// RFC 9180 `DeriveKeyPair(ikm)`: (private, public).
pub(crate) fn derive_key_pair(ikm: &[u8]) -> (Zeroizing<[u8; 32]>, [u8; 32]) {
    let (sk, pk) = Kem::derive_keypair(ikm);
    let mut sk_bytes = sk.to_bytes();
    let private = Zeroizing::new(sk_bytes.into());
    sk_bytes.zeroize();
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
    let pk = PublicKey::from_bytes(recipient).map_err(|_| Failed)?;
    let (enc, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
        &OpModeS::Base,
        &pk,
        INFO,
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
    let sk = PrivateKey::from_bytes(private).map_err(|_| Failed)?;
    let enc = EncappedKey::from_bytes(enc).map_err(|_| Failed)?;
    hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
        &OpModeR::Base,
        &sk,
        &enc,
        INFO,
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
