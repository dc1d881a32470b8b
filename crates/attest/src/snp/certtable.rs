//! The SEV-SNP extended-report certificate table (configfs-tsm `auxblob`, `SNP_GET_EXT_REPORT`).
//!
//! Entries of 16-byte GUID ‖ u32 offset ‖ u32 length (little-endian; offsets from the start of
//! the table), terminated by an all-zero entry; the certificates follow.

/// GUID of the VCEK entry, 63da758d-e664-4564-adc5-f4b93be8accd, in table byte order.
pub const VCEK_GUID: [u8; 16] = [
    0x63, 0xda, 0x75, 0x8d, 0xe6, 0x64, 0x45, 0x64, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8, 0xac, 0xcd,
];
/// GUID of the VLEK entry, a8074bc2-a25a-483e-aae6-39c045a0b8a1.
pub const VLEK_GUID: [u8; 16] = [
    0xa8, 0x07, 0x4b, 0xc2, 0xa2, 0x5a, 0x48, 0x3e, 0xaa, 0xe6, 0x39, 0xc0, 0x45, 0xa0, 0xb8, 0xa1,
];
/// GUID of the ASK entry, 4ab7b379-bbac-4fe4-a02f-05aef327c782.
pub const ASK_GUID: [u8; 16] = [
    0x4a, 0xb7, 0xb3, 0x79, 0xbb, 0xac, 0x4f, 0xe4, 0xa0, 0x2f, 0x05, 0xae, 0xf3, 0x27, 0xc7, 0x82,
];
/// GUID of the ARK entry, c0b406a4-a803-4952-9743-3fb6014cd0ae.
pub const ARK_GUID: [u8; 16] = [
    0xc0, 0xb4, 0x06, 0xa4, 0xa8, 0x03, 0x49, 0x52, 0x97, 0x43, 0x3f, 0xb6, 0x01, 0x4c, 0xd0, 0xae,
];

const ENTRY_LEN: usize = 24;
/// Most entries accepted before the terminator.
const MAX_ENTRIES: usize = 64;

/// One certificate of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertEntry {
    /// The entry's GUID, in table byte order.
    pub guid: [u8; 16],
    /// The certificate (DER).
    pub data: Vec<u8>,
}

/// Parses a certificate table. Every entry must lie within `table`.
pub fn parse(table: &[u8]) -> Result<Vec<CertEntry>, String> {
    let mut entries = Vec::new();
    for index in 0..=MAX_ENTRIES {
        let start = index * ENTRY_LEN;
        let raw = table.get(start..start + ENTRY_LEN).ok_or_else(|| {
            format!("certificate table ends inside entry {index} (no terminator)")
        })?;
        if raw.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        if index == MAX_ENTRIES {
            break;
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&raw[..16]);
        let offset = u32::from_le_bytes([raw[16], raw[17], raw[18], raw[19]]) as usize;
        let length = u32::from_le_bytes([raw[20], raw[21], raw[22], raw[23]]) as usize;
        let data = offset
            .checked_add(length)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| {
                format!("certificate table entry {index} (offset {offset}, length {length}) lies outside the table of {} bytes", table.len())
            })?;
        entries.push(CertEntry {
            guid,
            data: data.to_vec(),
        });
    }
    Err(format!(
        "certificate table has more than {MAX_ENTRIES} entries"
    ))
}

/// Builds a certificate table (for tests and for hosts that provision one).
pub fn build(entries: &[CertEntry]) -> Vec<u8> {
    let header = (entries.len() + 1) * ENTRY_LEN;
    let mut table = vec![0u8; header];
    let mut offset = header;
    for (i, entry) in entries.iter().enumerate() {
        let e = &mut table[i * ENTRY_LEN..(i + 1) * ENTRY_LEN];
        e[..16].copy_from_slice(&entry.guid);
        e[16..20].copy_from_slice(&(offset as u32).to_le_bytes());
        e[20..24].copy_from_slice(&(entry.data.len() as u32).to_le_bytes());
        offset += entry.data.len();
    }
    for entry in entries {
        table.extend_from_slice(&entry.data);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let entries = vec![
            CertEntry {
                guid: VCEK_GUID,
                data: vec![1, 2, 3],
            },
            CertEntry {
                guid: ASK_GUID,
                data: vec![4; 10],
            },
        ];
        let table = build(&entries);
        assert_eq!(parse(&table).unwrap(), entries);
        assert!(parse(&table[..30]).is_err());
        let mut bad = table.clone();
        bad[20] = 0xff; // length of the first entry beyond the table
        assert!(parse(&bad).unwrap_err().contains("outside the table"));
        assert!(parse(&[]).is_err());
        assert_eq!(parse(&[0u8; 24]).unwrap(), vec![]);
    }
}
