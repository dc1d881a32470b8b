//! The small, strict CBOR subset the evidence extension needs (RFC 8949): unsigned integers,
//! byte strings, text strings, arrays, maps and tags, definite lengths only, shortest-form
//! heads on output. Input is hostile: every length is checked against the remaining input and
//! nesting is bounded.

/// A decoded CBOR item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    Uint(u64),
    Bytes(&'a [u8]),
    Text(&'a str),
    Array(Vec<Item<'a>>),
    Map(Vec<(Item<'a>, Item<'a>)>),
    Tag(u64, Box<Item<'a>>),
}

const MAX_DEPTH: usize = 8;
const MAX_ITEMS: u64 = 64;

fn head(out: &mut Vec<u8>, major: u8, value: u64) {
    let m = major << 5;
    if value < 24 {
        out.push(m | value as u8);
    } else if value <= u8::MAX as u64 {
        out.push(m | 24);
        out.push(value as u8);
    } else if value <= u16::MAX as u64 {
        out.push(m | 25);
        out.extend_from_slice(&(value as u16).to_be_bytes());
    } else if value <= u32::MAX as u64 {
        out.push(m | 26);
        out.extend_from_slice(&(value as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&value.to_be_bytes());
    }
}

/// Encodes `item`.
pub(crate) fn encode(item: &Item<'_>, out: &mut Vec<u8>) {
    match item {
        Item::Uint(v) => head(out, 0, *v),
        Item::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        Item::Text(t) => {
            head(out, 3, t.len() as u64);
            out.extend_from_slice(t.as_bytes());
        }
        Item::Array(items) => {
            head(out, 4, items.len() as u64);
            for i in items {
                encode(i, out);
            }
        }
        Item::Map(pairs) => {
            head(out, 5, pairs.len() as u64);
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }
        Item::Tag(tag, inner) => {
            head(out, 6, *tag);
            encode(inner, out);
        }
    }
}

pub(crate) fn to_vec(item: &Item<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(item, &mut out);
    out
}

/// Decodes exactly one item spanning all of `input`.
pub(crate) fn decode(input: &[u8]) -> Result<Item<'_>, String> {
    let mut pos = 0;
    let item = decode_at(input, &mut pos, 0)?;
    if pos != input.len() {
        return Err(format!(
            "{} trailing bytes after the CBOR item",
            input.len() - pos
        ));
    }
    Ok(item)
}

fn take<'a>(input: &'a [u8], pos: &mut usize, n: u64) -> Result<&'a [u8], String> {
    let remaining = input.len() - *pos;
    if n > remaining as u64 {
        return Err(format!(
            "CBOR length {n} exceeds the {remaining} remaining bytes"
        ));
    }
    let n = n as usize;
    let s = &input[*pos..*pos + n];
    *pos += n;
    Ok(s)
}

fn decode_at<'a>(input: &'a [u8], pos: &mut usize, depth: usize) -> Result<Item<'a>, String> {
    if depth > MAX_DEPTH {
        return Err("CBOR nesting too deep".into());
    }
    let first = *take(input, pos, 1)?.first().ok_or("truncated CBOR")?;
    let major = first >> 5;
    let info = first & 0x1f;
    let value = match info {
        0..=23 => info as u64,
        24 => take(input, pos, 1)?[0] as u64,
        25 => u16::from_be_bytes(take(input, pos, 2)?.try_into().unwrap_or_default()) as u64,
        26 => u32::from_be_bytes(take(input, pos, 4)?.try_into().unwrap_or_default()) as u64,
        27 => u64::from_be_bytes(take(input, pos, 8)?.try_into().unwrap_or_default()),
        31 => return Err("indefinite-length CBOR items are not accepted".into()),
        _ => return Err(format!("reserved CBOR additional information {info}")),
    };
    Ok(match major {
        0 => Item::Uint(value),
        2 => Item::Bytes(take(input, pos, value)?),
        3 => Item::Text(
            std::str::from_utf8(take(input, pos, value)?)
                .map_err(|_| "CBOR text string is not UTF-8".to_string())?,
        ),
        4 => {
            if value > MAX_ITEMS {
                return Err(format!("CBOR array of {value} items is too long"));
            }
            let mut items = Vec::with_capacity(value as usize);
            for _ in 0..value {
                items.push(decode_at(input, pos, depth + 1)?);
            }
            Item::Array(items)
        }
        5 => {
            if value > MAX_ITEMS {
                return Err(format!("CBOR map of {value} entries is too long"));
            }
            let mut pairs = Vec::with_capacity(value as usize);
            for _ in 0..value {
                let k = decode_at(input, pos, depth + 1)?;
                let v = decode_at(input, pos, depth + 1)?;
                pairs.push((k, v));
            }
            Item::Map(pairs)
        }
        6 => Item::Tag(value, Box::new(decode_at(input, pos, depth + 1)?)),
        _ => return Err(format!("unexpected CBOR major type {major}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_shortest_heads() {
        let big = vec![7u8; 300];
        let item = Item::Tag(
            0x1a7501,
            Box::new(Item::Array(vec![
                Item::Bytes(&big),
                Item::Map(vec![(Item::Text("k"), Item::Uint(8))]),
            ])),
        );
        let bytes = to_vec(&item);
        assert_eq!(&bytes[..4], &[0xda, 0x00, 0x1a, 0x75]);
        assert_eq!(decode(&bytes).unwrap(), item);
        assert_eq!(to_vec(&Item::Uint(23)), vec![0x17]);
        assert_eq!(to_vec(&Item::Uint(24)), vec![0x18, 24]);
        assert_eq!(
            to_vec(&Item::Tag(60000, Box::new(Item::Uint(0)))),
            vec![0xd9, 0xea, 0x60, 0]
        );
    }

    #[test]
    fn hostile_input_is_refused() {
        assert!(decode(&[]).is_err());
        assert!(decode(&[0x5a, 0xff, 0xff, 0xff, 0xff]).is_err()); // bstr longer than input
        assert!(decode(&[0x5f]).is_err()); // indefinite
        assert!(decode(&[0x01, 0x02]).is_err()); // trailing
        assert!(decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[0xc1; 64]).is_err()); // nesting
        assert!(decode(&[0x20]).is_err()); // negative ints unsupported
        assert!(decode(&[0x62, 0xff, 0xfe]).is_err()); // bad UTF-8
    }
}
