//! The agent's credentials: each on its own locked, zeroized pages (see
//! `coffer_platform::secret::Locked`), as the JSON the agent protocol answers with.

use std::io::Cursor;

use coffer_credstore::{Credential, MAX_CREDENTIAL_BYTES};
use coffer_platform::secret::Locked;

/// Room for one credential's JSON: base64 of the largest credential plus its field names.
const SLOT_BYTES: usize = MAX_CREDENTIAL_BYTES / 3 * 4 + 4096;

struct Slot {
    len: usize,
    bytes: [u8; SLOT_BYTES],
}

/// One credential held by the agent.
pub(crate) struct Held {
    slot: Locked<Slot>,
}

impl Held {
    /// Copies `credential` (as protocol JSON) onto fresh locked pages.
    pub(crate) fn new(credential: &Credential) -> Result<Held, String> {
        // Built empty on the locked pages, then written there directly: the JSON never sits
        // in ordinary memory.
        let mut slot = Locked::new_with(|| Slot {
            len: 0,
            bytes: [0; SLOT_BYTES],
        });
        let mut cursor = Cursor::new(&mut slot.bytes[..]);
        serde_json::to_writer(&mut cursor, credential)
            .map_err(|e| format!("a credential does not fit the agent's memory slot: {e}"))?;
        slot.len = cursor.position() as usize;
        Ok(Held { slot })
    }

    /// The credential's protocol JSON.
    pub(crate) fn json(&self) -> &[u8] {
        &self.slot.bytes[..self.slot.len]
    }

    /// True when the pages are locked into RAM.
    pub(crate) fn is_locked(&self) -> bool {
        self.slot.is_locked()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coffer_credstore::SecretBytes;
    use zeroize::Zeroizing;

    #[test]
    fn the_largest_credential_fits() {
        let credential = Credential {
            client_certificate: Some(SecretBytes::new(Zeroizing::new(vec![
                b'c';
                MAX_CREDENTIAL_BYTES
                    / 2
            ]))),
            client_key: Some(SecretBytes::new(Zeroizing::new(vec![
                b'k';
                MAX_CREDENTIAL_BYTES
                    / 2
            ]))),
            token: None,
        };
        credential.validate().unwrap();
        let held = Held::new(&credential).unwrap();
        let back: Credential = serde_json::from_slice(held.json()).unwrap();
        assert_eq!(back, credential);
    }
}
