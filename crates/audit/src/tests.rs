use super::*;
use std::thread;

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        event: if i.is_multiple_of(3) {
            "rotate"
        } else {
            "unwrap"
        }
        .to_string(),
        caller: Caller::new("sgx", &[0xab; 32], Some("kms"), "10.0.0.7:4431"),
        keyring: Some("prod".into()),
        key_id: Some(format!("kek-{i}")),
        location: None,
        binding: None,
        result: if i.is_multiple_of(5) {
            Outcome::Denied
        } else {
            Outcome::Ok
        },
        reason: (i.is_multiple_of(5)).then(|| "policy: measurement not allowed".to_string()),
    }
}

fn write_log(path: &Path, n: u64, options: AuditOptions) {
    // Segment headers take seq numbers of their own.
    let exact = options.segment_bytes.is_none();
    let mut log = AuditLog::open(path, options).unwrap();
    for i in 1..=n {
        let seq = log.append(entry(i)).unwrap();
        assert!(seq == i || !exact);
    }
}

fn lines_of(path: &Path) -> Vec<Vec<u8>> {
    let data = fs::read(path).unwrap();
    data.split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    fs::write(path, lines.concat()).unwrap();
}

fn hmac_opts(key: u8) -> AuditOptions {
    AuditOptions {
        chain: ChainMode::Hmac(ChainKey::new([key; 32])),
        ..AuditOptions::default()
    }
}

fn verify_default(path: &Path) -> Result<VerifyReport, AuditError> {
    verify(path, &VerifyOptions::default())
}

#[test]
fn append_reopen_continue_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 40, AuditOptions::default());
    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert_eq!(log.last_seq(), 40);
    assert_eq!(log.append(entry(41)).unwrap(), 41);
    let last = log.last_hash().to_string();
    drop(log);
    let report = verify_default(&path).unwrap();
    assert_eq!(report.lines, 41);
    assert_eq!(report.first_seq, 1);
    assert_eq!(report.last_seq, 41);
    assert_eq!(report.last_hash, last);
    assert_eq!(report.head_seq, Some(41));
    assert_eq!(report.unanchored_lines, 0);
    // Line format: prev of line 1 is the genesis, each record parses back.
    let lines = lines_of(&path);
    let first: AuditRecord = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!(first.prev, SHA256_GENESIS);
    assert_eq!(first.caller.measurement, "ab".repeat(32));
    assert!(humantime::parse_rfc3339(&first.time).is_ok());
    let second: AuditRecord = serde_json::from_slice(&lines[1]).unwrap();
    assert_eq!(
        second.prev,
        hex::encode(Sha256::digest(&lines[0][..lines[0].len() - 1]))
    );
}

#[test]
fn empty_and_missing_logs_verify() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let report = verify_default(&path).unwrap();
    assert_eq!((report.lines, report.last_seq), (0, 0));
    drop(AuditLog::open(&path, AuditOptions::default()).unwrap());
    let report = verify_default(&path).unwrap();
    assert_eq!(report.head_seq, Some(0));
    assert_eq!(report.last_hash, SHA256_GENESIS);
}

#[test]
fn edited_middle_line_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let mut lines = lines_of(&path);
    // Change one byte inside the key id of line 5 (still valid JSON).
    let pos = lines[4].windows(5).position(|w| w == b"kek-5").unwrap();
    lines[4][pos + 4] = b'9';
    write_lines(&path, &lines);
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::Edited { line: 5 })
    ));
    // The writer refuses too when the tail is affected: edit the last line.
    write_log(&dir.path().join("b.log"), 3, AuditOptions::default());
    let b = dir.path().join("b.log");
    let mut lines = lines_of(&b);
    let pos = lines[2].windows(5).position(|w| w == b"kek-3").unwrap();
    lines[2][pos + 4] = b'7';
    write_lines(&b, &lines);
    assert!(matches!(
        verify_default(&b),
        Err(AuditError::Edited { line: 3 })
    ));
    assert!(matches!(
        AuditLog::open(&b, AuditOptions::default()),
        Err(AuditError::Edited { line: 3 })
    ));
}

#[test]
fn deleted_middle_line_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let mut lines = lines_of(&path);
    lines.remove(6);
    write_lines(&path, &lines);
    let err = verify_default(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Gap {
                line: 7,
                expected_seq: 7,
                found_seq: 8
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("1 line(s) were deleted"));
}

#[test]
fn swapped_lines_are_reported_as_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let mut lines = lines_of(&path);
    lines.swap(3, 4);
    write_lines(&path, &lines);
    let err = verify_default(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Reordered {
                line: 4,
                expected_seq: 4,
                found_seq: 5
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("line 4 holds record seq 5, expected 4: records were reordered"),
        "{message}"
    );
    assert!(!message.contains("deleted"), "{message}");
    // A record moved further down is a reordering too, not a deletion.
    let mut lines = lines_of(&path);
    lines.swap(3, 4);
    let moved = lines.remove(2);
    lines.insert(7, moved);
    write_lines(&path, &lines);
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::Reordered {
            line: 3,
            expected_seq: 3,
            found_seq: 4
        })
    ));
}

#[test]
fn swapping_back_the_seq_numbers_but_not_the_content_is_an_edit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let mut lines = lines_of(&path);
    lines.swap(3, 4);
    let seq_of = |l: &[u8]| String::from_utf8(l.to_vec()).unwrap();
    lines[3] = seq_of(&lines[3])
        .replacen("\"seq\":5", "\"seq\":4", 1)
        .into_bytes();
    lines[4] = seq_of(&lines[4])
        .replacen("\"seq\":4", "\"seq\":5", 1)
        .into_bytes();
    write_lines(&path, &lines);
    // Line 4 now has the right seq but not line 3's link.
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::Edited { line: 3 })
    ));
}

#[test]
fn duplicated_line_is_reported_as_duplicated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let mut lines = lines_of(&path);
    let dup = lines[2].clone();
    lines.insert(3, dup);
    write_lines(&path, &lines);
    let err = verify_default(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Duplicated {
                line: 4,
                expected_seq: 4,
                found_seq: 3
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("a record was duplicated"), "{err}");
}

#[test]
fn edited_seq_field_is_an_edit_not_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let mut lines = lines_of(&path);
    lines[4] = String::from_utf8(lines[4].clone())
        .unwrap()
        .replacen("\"seq\":5", "\"seq\":9", 1)
        .into_bytes();
    write_lines(&path, &lines);
    let err = verify_default(&path).unwrap_err();
    assert!(matches!(err, AuditError::Edited { line: 5 }), "{err:?}");
    // The last line too (no line after it to compare with).
    let b = dir.path().join("b.log");
    write_log(&b, 10, AuditOptions::default());
    let mut lines = lines_of(&b);
    lines[9] = String::from_utf8(lines[9].clone())
        .unwrap()
        .replacen("\"seq\":10", "\"seq\":15", 1)
        .into_bytes();
    write_lines(&b, &lines);
    let err = verify(
        &b,
        &VerifyOptions {
            head: HeadCheck::Ignore,
            ..VerifyOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, AuditError::Edited { line: 10 }), "{err:?}");
}

#[test]
fn truncated_end_is_detected_via_head() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, AuditOptions::default());
    let lines = lines_of(&path);
    write_lines(&path, &lines[..8]);
    let err = verify_default(&path).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::Truncated {
                expected_lines: 10,
                found_lines: 8
            }
        ),
        "{err:?}"
    );
    // The chain alone still verifies (that is why the head exists).
    let alone = VerifyOptions {
        head: HeadCheck::Ignore,
        ..VerifyOptions::default()
    };
    assert_eq!(verify(&path, &alone).unwrap().lines, 8);
    // The writer refuses to continue a truncated log.
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Truncated { .. })
    ));
    // Truncating everything is detected as well.
    fs::write(&path, b"").unwrap();
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::Truncated {
            expected_lines: 10,
            found_lines: 0
        })
    ));
    fs::remove_file(&path).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Truncated { .. })
    ));
    // Require mode insists on a head file.
    let other = dir.path().join("nohead.log");
    write_log(&other, 2, AuditOptions::default());
    fs::remove_file(head_path(&other)).unwrap();
    let require = VerifyOptions {
        head: HeadCheck::Require,
        ..VerifyOptions::default()
    };
    assert!(verify(&other, &require).is_err());
    assert_eq!(verify_default(&other).unwrap().head_seq, None);
}

#[test]
fn lines_beyond_a_lagging_head_are_unanchored_and_reopen_anchors_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 5, AuditOptions::default());
    let head = fs::read(head_path(&path)).unwrap();
    write_log(&path, 0, AuditOptions::default());
    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append(entry(6)).unwrap();
    log.append(entry(7)).unwrap();
    drop(log);
    // Simulate a crash after the log write but before the head update.
    fs::write(head_path(&path), &head).unwrap();
    let report = verify_default(&path).unwrap();
    assert_eq!((report.head_seq, report.unanchored_lines), (Some(5), 2));
    // A lagging head with the wrong hash is refused by open and verify.
    let bogus = format!("{{\"seq\":6,\"hash\":\"{}\"}}", "1".repeat(64));
    fs::write(head_path(&path), &bogus).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Edited { line: 6 })
    ));
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::Edited { line: 6 })
    ));
    fs::write(head_path(&path), &head).unwrap();
    drop(AuditLog::open(&path, AuditOptions::default()).unwrap());
    let report = verify_default(&path).unwrap();
    assert_eq!((report.head_seq, report.unanchored_lines), (Some(7), 0));
}

#[test]
fn appended_garbage_is_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 4, AuditOptions::default());
    let mut data = fs::read(&path).unwrap();
    data.extend_from_slice(b"{\"seq\":5,\"not\":\"a record\"}\n");
    fs::write(&path, &data).unwrap();
    let err = verify_default(&path).unwrap_err();
    assert!(
        matches!(err, AuditError::Malformed { line: 5, .. }),
        "{err:?}"
    );
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Malformed { line: 5, .. })
    ));
}

#[test]
fn hmac_chain_with_wrong_key_is_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 6, hmac_opts(7));
    let right = VerifyOptions {
        chain: hmac_opts(7).chain,
        head: HeadCheck::IfPresent,
    };
    assert_eq!(verify(&path, &right).unwrap().lines, 6);
    let wrong = VerifyOptions {
        chain: hmac_opts(8).chain,
        head: HeadCheck::IfPresent,
    };
    assert!(matches!(verify(&path, &wrong), Err(AuditError::WrongKey)));
    assert!(matches!(
        AuditLog::open(&path, hmac_opts(8)),
        Err(AuditError::WrongKey)
    ));
    // Mode mismatches are named.
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::NotSha256Chain)
    ));
    let sha = dir.path().join("sha.log");
    write_log(&sha, 1, AuditOptions::default());
    assert!(matches!(verify(&sha, &right), Err(AuditError::WrongKey)));
    assert!(matches!(
        AuditLog::open(&sha, hmac_opts(7)),
        Err(AuditError::WrongKey)
    ));
    // A rebuilt SHA-256-style chain after an edit does not verify under HMAC.
    let mut lines = lines_of(&path);
    let pos = lines[2].windows(5).position(|w| w == b"kek-3").unwrap();
    lines[2][pos + 4] = b'8';
    write_lines(&path, &lines);
    assert!(matches!(
        verify(&path, &right),
        Err(AuditError::Edited { line: 3 })
    ));
    // Reopening with the right key continues the chain.
    let p2 = dir.path().join("h2.log");
    write_log(&p2, 3, hmac_opts(7));
    write_log(&p2, 0, hmac_opts(7));
    let mut log = AuditLog::open(&p2, hmac_opts(7)).unwrap();
    assert_eq!(log.append(entry(4)).unwrap(), 4);
    drop(log);
    assert_eq!(verify(&p2, &right).unwrap().last_seq, 4);
}

#[test]
fn concurrent_appends_produce_a_valid_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let shared = SharedAuditLog::new(AuditLog::open(&path, hmac_opts(1)).unwrap());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = shared.clone();
            thread::spawn(move || {
                for i in 0..25 {
                    log.append(entry(t * 100 + i)).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(shared.last_seq(), 100);
    shared.sync().unwrap();
    drop(shared);
    let opts = VerifyOptions {
        chain: hmac_opts(1).chain,
        head: HeadCheck::Require,
    };
    let report = verify(&path, &opts).unwrap();
    assert_eq!(report.lines, 100);
    assert_eq!(report.head_seq, Some(100));
}

#[test]
fn second_writer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let _log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert!(matches!(
        AuditLog::open(&path, AuditOptions::default()),
        Err(AuditError::Locked { .. })
    ));
}

#[test]
fn partial_last_line_needs_explicit_repair() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 5, AuditOptions::default());
    let mut lines = lines_of(&path);
    let complete = lines.concat();
    // A crash while writing line 6: half a line, no newline.
    let half = lines[4][..40].to_vec();
    lines.push(half.clone());
    write_lines(&path, &lines);

    let err = AuditLog::open(&path, AuditOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::PartialTail {
                line: 6,
                bytes: 40,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("repair_truncated_tail"));
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::PartialTail { line: 6, .. })
    ));
    // open did not modify anything.
    assert_eq!(fs::read(&path).unwrap(), lines.concat());

    let moved = repair_truncated_tail(&path)
        .unwrap()
        .expect("something moved");
    assert!(moved
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .starts_with("audit.log.partial-"));
    assert_eq!(fs::read(&moved).unwrap(), half);
    assert_eq!(fs::read(&path).unwrap(), complete);
    assert_eq!(repair_truncated_tail(&path).unwrap(), None);

    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    assert_eq!(log.append(entry(6)).unwrap(), 6);
    drop(log);
    assert_eq!(verify_default(&path).unwrap().lines, 6);

    // A partial first line (crash on the very first append).
    let p = dir.path().join("first.log");
    fs::write(&p, b"{\"seq\":1,\"ti").unwrap();
    assert!(matches!(
        AuditLog::open(&p, AuditOptions::default()),
        Err(AuditError::PartialTail {
            line: 1,
            bytes: 12,
            ..
        })
    ));
    repair_truncated_tail(&p).unwrap().unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"");
    write_log(&p, 1, AuditOptions::default());
}

#[test]
fn oversized_fields_are_truncated_not_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    let mut e = entry(1);
    e.event = "Un Wrap!\u{1F600}".into();
    // Control characters expand 6x under JSON escaping; multi-byte chars test boundaries.
    e.reason = Some("\u{1}é".repeat(50_000));
    e.caller.peer = "p".repeat(100_000);
    e.caller.measurement = "f".repeat(10_000);
    e.key_id = Some("ü".repeat(10_000));
    log.append(e).unwrap();
    drop(log);
    let lines = lines_of(&path);
    assert!(lines[0].len() <= limits::MAX_LINE + 1);
    let rec: AuditRecord = serde_json::from_slice(&lines[0]).unwrap();
    assert_eq!(rec.event, "un_wrap__");
    assert!(rec.caller.peer.len() <= limits::NAME);
    assert!(rec.caller.peer.ends_with(limits::TRUNCATION_MARKER));
    assert!(rec.reason.unwrap().ends_with(limits::TRUNCATION_MARKER));
    verify_default(&path).unwrap();
}

#[test]
fn batched_sync_anchors_on_sync_and_drop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let opts = AuditOptions {
        sync: SyncPolicy::Batched {
            interval: Duration::from_secs(3600),
        },
        ..AuditOptions::default()
    };
    let mut log = AuditLog::open(&path, opts.clone()).unwrap();
    for i in 1..=5 {
        log.append(entry(i)).unwrap();
    }
    // Not synced yet: the head still names the empty log.
    let report = verify_default(&path).unwrap();
    assert_eq!((report.head_seq, report.unanchored_lines), (Some(0), 5));
    log.sync().unwrap();
    assert_eq!(verify_default(&path).unwrap().head_seq, Some(5));
    log.append(entry(6)).unwrap();
    drop(log);
    assert_eq!(verify_default(&path).unwrap().head_seq, Some(6));
}

/// Extracts `ident:` / `ident=` field names from Debug/Display output.
fn field_names(s: &str, sep: char) -> Vec<String> {
    let mut names = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut in_quotes = false;
    for i in 0..chars.len() {
        if chars[i] == '"' && (i == 0 || chars[i - 1] != '\\') {
            in_quotes = !in_quotes;
        }
        if in_quotes || chars[i] != sep {
            continue;
        }
        let mut j = i;
        while j > 0
            && (chars[j - 1].is_alphanumeric() || chars[j - 1] == '_' || chars[j - 1] == '.')
        {
            j -= 1;
        }
        if j < i {
            names.push(chars[j..i].iter().collect());
        }
    }
    names
}

#[test]
fn debug_and_display_contain_only_the_listed_fields() {
    let mut entry = entry(5);
    entry.location = Some("payments/db/password".into());
    entry.binding = Some("namespace payments".into());
    let record = entry.to_record(
        5,
        "2026-01-01T00:00:00.000Z".into(),
        SHA256_GENESIS.into(),
        Some(3),
    );
    let listed = [
        "seq",
        "time",
        "event",
        "caller",
        "tee",
        "measurement",
        "role",
        "peer",
        "keyring",
        "key_id",
        "location",
        "binding",
        "result",
        "reason",
        "count",
        "prev",
    ];
    for name in field_names(&format!("{record:?}"), ':') {
        assert!(
            listed.contains(&name.as_str()),
            "unexpected Debug field {name}"
        );
    }
    for name in field_names(&record.to_string(), '=') {
        let base = name.strip_prefix("caller.").unwrap_or(&name);
        assert!(listed.contains(&base), "unexpected Display field {name}");
    }
    // The serialised line has exactly the documented keys, in the documented order.
    let line = serde_json::to_string(&record).unwrap();
    let order = [
        "\"seq\":",
        "\"time\":",
        "\"event\":",
        "\"caller\":",
        "\"tee\":",
        "\"measurement\":",
        "\"role\":",
        "\"peer\":",
        "\"keyring\":",
        "\"key_id\":",
        "\"location\":",
        "\"binding\":",
        "\"result\":",
        "\"reason\":",
        "\"count\":",
        "\"prev\":",
    ];
    let positions: Vec<usize> = order.iter().map(|k| line.find(k).unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{line}");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json.as_object().unwrap().len(), 12);
    assert_eq!(json["caller"].as_object().unwrap().len(), 4);
    // Keys are never printed.
    let key = ChainKey::new([0x42; 32]);
    assert_eq!(format!("{key:?}"), "ChainKey(<redacted>)");
    assert!(!format!("{:?}", ChainMode::Hmac(key)).contains("42"));
}

/// Tiny deterministic PRNG (xorshift) so the fuzz test needs no extra dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn random_input_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 6, AuditOptions::default());
    let good = fs::read(&path).unwrap();
    let head = fs::read(head_path(&path)).unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..300 {
        let data: Vec<u8> = match round % 3 {
            // Pure random bytes (with plenty of newlines and braces).
            0 => (0..rng.next() % 4000)
                .map(|_| match rng.next() % 8 {
                    0 => b'\n',
                    1 => b'{',
                    _ => rng.next() as u8,
                })
                .collect(),
            // A valid log with random byte flips.
            1 => {
                let mut d = good.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % d.len();
                    d[i] = rng.next() as u8;
                }
                d
            }
            // A valid log cut at a random point.
            _ => good[..(rng.next() as usize) % good.len()].to_vec(),
        };
        fs::write(&path, &data).unwrap();
        if round % 2 == 0 {
            fs::write(head_path(&path), &head).unwrap();
        } else {
            let _ = fs::remove_file(head_path(&path));
        }
        let verified = verify_default(&path);
        if let Ok(log) = AuditLog::open(&path, AuditOptions::default()) {
            drop(log);
        }
        let _ = repair_truncated_tail(&path);
        if data == good {
            verified.unwrap();
        }
    }
    // Random head files are reported, not panicked on.
    fs::write(&path, &good).unwrap();
    fs::write(head_path(&path), b"\xff\x00garbage").unwrap();
    assert!(matches!(
        verify_default(&path),
        Err(AuditError::BadHead { .. })
    ));
}

#[test]
fn append_all_chains_like_single_appends() {
    let dir = tempfile::tempdir().unwrap();
    let one = dir.path().join("one.log");
    let batched = dir.path().join("batched.log");
    {
        let mut a = AuditLog::open(&one, hmac_opts(9)).unwrap();
        let mut b = AuditLog::open(&batched, hmac_opts(9)).unwrap();
        for i in 1..=3 {
            a.append(entry(i)).unwrap();
        }
        b.append(entry(1)).unwrap();
        assert_eq!(b.append_all(vec![entry(2), entry(3)]).unwrap(), 3);
        assert_eq!(b.append_all(Vec::new()).unwrap(), 3);
        // Lines carry their own times, so only the chain's validity can be compared.
        assert_eq!(a.last_seq(), b.last_seq());
    }
    let options = VerifyOptions {
        chain: ChainMode::Hmac(ChainKey::new([9; 32])),
        head: HeadCheck::Require,
    };
    assert_eq!(verify(&batched, &options).unwrap().lines, 3);
    assert_eq!(verify(&one, &options).unwrap().lines, 3);
}

fn segmented(bytes: u64, keep: Option<u64>) -> AuditOptions {
    AuditOptions {
        chain: ChainMode::Hmac(ChainKey::new([7; 32])),
        segment_bytes: Some(bytes),
        retention_segments: keep,
        // Rotation and drop sync anyway; per-record fdatasync only slows the test.
        sync: SyncPolicy::Batched {
            interval: Duration::from_secs(3600),
        },
        ..AuditOptions::default()
    }
}

fn verify_hmac7(path: &Path) -> Result<VerifyReport, AuditError> {
    verify(
        path,
        &VerifyOptions {
            chain: ChainMode::Hmac(ChainKey::new([7; 32])),
            head: HeadCheck::Require,
        },
    )
}

fn records_of(path: &Path) -> Vec<AuditRecord> {
    let mut files: Vec<PathBuf> = closed_segments(path)
        .unwrap()
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    files.push(path.to_path_buf());
    files
        .iter()
        .flat_map(|f| {
            fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<AuditRecord>(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn segments_stay_bounded_and_the_chain_crosses_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let n = 600;
    write_log(&path, n, segmented(MIN_SEGMENT_BYTES, None));
    let closed = closed_segments(&path).unwrap();
    assert!(closed.len() >= 2, "{closed:?}");
    for (number, file) in &closed {
        let len = fs::metadata(file).unwrap().len();
        assert!(len <= MIN_SEGMENT_BYTES, "segment {number} is {len} bytes");
    }
    assert!(fs::metadata(&path).unwrap().len() <= MIN_SEGMENT_BYTES);
    let report = verify_hmac7(&path).unwrap();
    // Every append plus one header per closed segment.
    assert_eq!(report.last_seq, n + closed.len() as u64);
    assert_eq!(report.lines, report.last_seq);
    assert_eq!(report.segments, closed.len() as u64 + 1);
    assert_eq!((report.pruned_segments, report.pruned_records), (0, 0));
    // Each later segment starts with a header that names its predecessor and chains to it.
    let records = records_of(&path);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
    }
    let second = fs::read_to_string(&closed[1].1).unwrap();
    let header: AuditRecord = serde_json::from_str(second.lines().next().unwrap()).unwrap();
    assert_eq!(header.event, SEGMENT_EVENT);
    assert!(
        header
            .reason
            .as_deref()
            .unwrap()
            .contains("audit.log.000001"),
        "{header:?}"
    );
    // Reopening continues the chain in the active segment.
    let mut log = AuditLog::open(&path, segmented(MIN_SEGMENT_BYTES, None)).unwrap();
    let next = log.append(entry(1)).unwrap();
    assert_eq!(next, report.last_seq + 1);
    drop(log);
    verify_hmac7(&path).unwrap();
}

#[test]
fn retention_removes_old_segments_and_verify_starts_at_the_first_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 1200, segmented(MIN_SEGMENT_BYTES, Some(2)));
    let closed = closed_segments(&path).unwrap();
    assert_eq!(closed.len(), 2, "{closed:?}");
    assert!(closed[0].0 > 1);
    let report = verify_hmac7(&path).unwrap();
    assert_eq!(report.pruned_segments, closed[0].0 - 1);
    assert_eq!(report.pruned_records, report.first_seq - 1);
    assert!(report.first_seq > 1);
    assert!(report.pruning_recorded);
    // The removal itself is on record.
    let records = records_of(&path);
    let prune = records
        .iter()
        .rev()
        .find(|r| r.event == PRUNE_EVENT)
        .unwrap();
    let removed = format!("removes audit.log.{:06}: ", closed[0].0 - 1);
    let before = format!("records before seq {}", report.first_seq);
    let reason = prune.reason.as_deref().unwrap();
    assert!(
        reason.contains(&removed) && reason.contains(&before),
        "{prune:?}"
    );
    // Removing the oldest kept segment too is not what retention recorded.
    let moved = dir.path().join("moved");
    fs::rename(&closed[0].1, &moved).unwrap();
    let report = verify_hmac7(&path).unwrap();
    assert!(!report.pruning_recorded, "{report:?}");
    fs::rename(&moved, &closed[0].1).unwrap();
    // Deleting the newest closed segment is a deletion of its records, not retention.
    fs::remove_file(&closed[1].1).unwrap();
    let err = verify_hmac7(&path).unwrap_err();
    assert!(
        matches!(&err, AuditError::InFile { source, .. } if matches!(**source, AuditError::Gap { line: 1, .. })),
        "{err:?}"
    );
}

#[test]
fn a_deleted_middle_segment_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 800, segmented(MIN_SEGMENT_BYTES, None));
    let closed = closed_segments(&path).unwrap();
    assert!(closed.len() >= 3, "{closed:?}");
    fs::remove_file(&closed[1].1).unwrap();
    let err = verify_hmac7(&path).unwrap_err();
    assert!(
        matches!(&err, AuditError::SegmentMissing { missing } if *missing == closed[1].1),
        "{err:?}"
    );
    assert!(err.to_string().contains("a segment was deleted"), "{err}");
}

#[test]
fn tampering_inside_a_closed_segment_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 600, segmented(MIN_SEGMENT_BYTES, None));
    let closed = closed_segments(&path).unwrap();
    let first = &closed[0].1;
    // Edit the last record of the first segment: the next segment's header names it.
    let mut lines = lines_of(first);
    let last = lines.len() - 1;
    let text = String::from_utf8(lines[last].clone()).unwrap();
    lines[last] = text.replacen("\"prod\"", "\"prox\"", 1).into_bytes();
    write_lines(first, &lines);
    let err = verify_hmac7(&path).unwrap_err();
    match &err {
        AuditError::InFile { path: p, source } => {
            assert_eq!(p, first);
            assert!(
                matches!(**source, AuditError::Edited { line } if line == last as u64 + 1),
                "{err}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().starts_with(&first.display().to_string()));
    // Swapping two records in the second segment is reported there as a reordering.
    write_lines(first, &lines_of(first)); // unchanged from here on
    let dir2 = tempfile::tempdir().unwrap();
    let path2 = dir2.path().join("audit.log");
    write_log(&path2, 600, segmented(MIN_SEGMENT_BYTES, None));
    let second = closed_segments(&path2).unwrap()[1].1.clone();
    let mut lines = lines_of(&second);
    lines.swap(5, 6);
    write_lines(&second, &lines);
    let err = verify_hmac7(&path2).unwrap_err();
    assert!(
        matches!(&err, AuditError::InFile { source, .. } if matches!(**source, AuditError::Reordered { line: 6, .. })),
        "{err:?}"
    );
}

#[test]
fn a_single_file_log_from_before_segments_opens_and_continues_segmented() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    // The previous version: one file, no segment options.
    write_log(
        &path,
        300,
        AuditOptions {
            chain: ChainMode::Hmac(ChainKey::new([7; 32])),
            ..AuditOptions::default()
        },
    );
    let before = verify_hmac7(&path).unwrap();
    assert_eq!((before.lines, before.segments), (300, 1));
    let old = fs::read(&path).unwrap();
    assert!(old.len() as u64 > MIN_SEGMENT_BYTES);
    let mut log = AuditLog::open(&path, segmented(MIN_SEGMENT_BYTES, None)).unwrap();
    for i in 0..300 {
        log.append(entry(i)).unwrap();
    }
    drop(log);
    let after = verify_hmac7(&path).unwrap();
    assert!(after.segments >= 2);
    assert_eq!(after.first_seq, 1);
    // Nothing of the old file was lost: it is the first closed segment.
    let first = &closed_segments(&path).unwrap()[0].1;
    assert_eq!(fs::read(first).unwrap(), old);
    assert_eq!(records_of(&path).len() as u64, after.last_seq);
}

#[test]
fn an_interrupted_rotation_is_completed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 10, segmented(MIN_SEGMENT_BYTES, None));
    // A crash right after the active file got its closed name, before it was replaced.
    fs::hard_link(&path, segment_path(&path, 1)).unwrap();
    verify_hmac7(&path).unwrap();
    let mut log = AuditLog::open(&path, segmented(MIN_SEGMENT_BYTES, None)).unwrap();
    assert!(!segment::same_file(&path, &segment_path(&path, 1)));
    assert_eq!(log.last_seq(), 11);
    log.append(entry(12)).unwrap();
    drop(log);
    let report = verify_hmac7(&path).unwrap();
    assert_eq!((report.last_seq, report.segments), (12, 2));
}

#[test]
fn a_torn_line_in_a_segmented_log_is_repaired_like_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    write_log(&path, 400, segmented(MIN_SEGMENT_BYTES, None));
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(b"{\"seq\":").unwrap();
    drop(file);
    assert!(matches!(
        AuditLog::open(&path, segmented(MIN_SEGMENT_BYTES, None)),
        Err(AuditError::PartialTail { .. })
    ));
    assert!(matches!(
        verify_hmac7(&path),
        Err(AuditError::InFile { .. })
    ));
    assert!(repair_truncated_tail(&path).unwrap().is_some());
    let mut log = AuditLog::open(&path, segmented(MIN_SEGMENT_BYTES, None)).unwrap();
    log.append(entry(1)).unwrap();
    drop(log);
    verify_hmac7(&path).unwrap();
}

#[test]
fn segment_size_below_the_minimum_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = AuditLog::open(&dir.path().join("audit.log"), segmented(1000, None)).unwrap_err();
    assert!(matches!(err, AuditError::SegmentTooSmall { bytes: 1000 }));
    assert!(err.to_string().contains("at least 65536"), "{err}");
}

#[test]
fn aggregator_writes_one_counted_record_per_key_and_refuses_failures() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let log = SharedAuditLog::new(AuditLog::open(&path, AuditOptions::default()).unwrap());
    let aggregator = Aggregator::new();
    let ok = |key: &str| AuditEntry {
        event: "unwrap".into(),
        caller: Caller::new("sgx", &[0xab; 32], Some("kms"), "10.0.0.7:4431"),
        keyring: Some("prod".into()),
        key_id: Some(key.into()),
        location: None,
        binding: None,
        result: Outcome::Ok,
        reason: None,
    };
    for _ in 0..25 {
        aggregator.add(ok("kek-1")).unwrap();
    }
    aggregator.add(ok("kek-2")).unwrap();
    let mut denied = ok("kek-1");
    denied.result = Outcome::Denied;
    denied.reason = Some("policy".into());
    assert_eq!(aggregator.add(denied.clone()), Err(Box::new(denied)));
    assert_eq!(aggregator.pending(), 26);
    assert_eq!(aggregator.flush(&log).unwrap(), 2);
    assert_eq!(aggregator.pending(), 0);
    assert_eq!(aggregator.flush(&log).unwrap(), 0);
    drop(log);
    let records = records_of(&path);
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].key_id.as_deref(), Some("kek-1"));
    assert_eq!(records[0].count, Some(25));
    assert_eq!(records[1].count, Some(1));
    verify_default(&path).unwrap();
}

#[test]
fn location_is_written_only_when_present_and_edits_to_it_are_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, AuditOptions::default()).unwrap();
    log.append(entry(1)).unwrap();
    let mut unseal = entry(2);
    unseal.event = "unseal".into();
    unseal.location = Some("payments/db/password".into());
    log.append(unseal).unwrap();
    drop(log);
    verify_default(&path).unwrap();
    let lines = lines_of(&path);
    assert!(!String::from_utf8_lossy(&lines[0]).contains("location"));
    let record: AuditRecord = serde_json::from_slice(&lines[1]).unwrap();
    assert_eq!(record.location.as_deref(), Some("payments/db/password"));
    assert!(record.to_string().contains("location=payments/db/password"));
    let mut edited = lines.clone();
    edited[1] = String::from_utf8(edited[1].clone())
        .unwrap()
        .replace("payments/db/password", "payments/db/passwort")
        .into_bytes();
    write_lines(&path, &edited);
    assert!(verify_default(&path).is_err());
}

fn hmac9() -> VerifyOptions {
    VerifyOptions {
        chain: ChainMode::Hmac(ChainKey::new([9; 32])),
        head: HeadCheck::IfPresent,
    }
}

#[test]
fn a_checkpoint_detects_a_deleted_tail_even_without_the_head_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, hmac_opts(9)).unwrap();
    for i in 1..=5 {
        log.append(entry(i)).unwrap();
    }
    let checkpoint = log.checkpoint().unwrap();
    assert_eq!((checkpoint.seq, checkpoint.segment), (5, 1));
    assert_eq!(checkpoint.hash, log.last_hash());
    for i in 6..=8 {
        log.append(entry(i)).unwrap();
    }
    drop(log);
    let (report, status) = verify_against(&path, &hmac9(), &checkpoint).unwrap();
    assert_eq!(report.last_seq, 8);
    assert_eq!(status, CheckpointStatus::Holds { records_after: 3 });

    // Cut after record 3 and drop the head file: the chain alone is a valid shorter log.
    let lines = lines_of(&path);
    write_lines(&path, &lines[..3]);
    fs::remove_file(head_path(&path)).unwrap();
    verify(&path, &hmac9()).unwrap();
    let (_, status) = verify_against(&path, &hmac9(), &checkpoint).unwrap();
    assert_eq!(status, CheckpointStatus::TailDeleted { last_seq: 3 });
}

#[test]
fn a_checkpoint_detects_a_log_replaced_by_another_under_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let other = dir.path().join("other.log");
    let checkpoint = {
        let mut log = AuditLog::open(&path, hmac_opts(9)).unwrap();
        for i in 1..=4 {
            log.append(entry(i)).unwrap();
        }
        log.checkpoint().unwrap()
    };
    // Another run's records differ at least in their times: wait for the clock to move.
    thread::sleep(Duration::from_millis(5));
    write_log(&other, 6, hmac_opts(9));
    fs::rename(&other, &path).unwrap();
    fs::rename(head_path(&other), head_path(&path)).unwrap();
    verify(&path, &hmac9()).unwrap();
    let (_, status) = verify_against(&path, &hmac9(), &checkpoint).unwrap();
    assert_eq!(status, CheckpointStatus::Rewritten);
}

#[test]
fn checking_a_live_log_reads_only_up_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, hmac_opts(9)).unwrap();
    let empty = log.checkpoint().unwrap();
    assert_eq!(empty.seq, 0);
    for i in 1..=3 {
        log.append(entry(i)).unwrap();
    }
    let checkpoint = log.checkpoint().unwrap();
    log.append(entry(4)).unwrap();
    let chain = ChainMode::Hmac(ChainKey::new([9; 32]));
    // A write in progress after the checkpoint does not matter.
    fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"seq\":5")
        .unwrap();
    assert!(verify(&path, &hmac9()).is_err());
    assert_eq!(
        check_checkpoint(&path, &chain, &checkpoint).unwrap(),
        CheckpointStatus::Holds { records_after: 0 }
    );
    assert_eq!(
        check_checkpoint(&path, &chain, &empty).unwrap(),
        CheckpointStatus::Holds { records_after: 0 }
    );
    let forged = Checkpoint {
        hash: SHA256_GENESIS.to_string(),
        ..checkpoint
    };
    assert_eq!(
        check_checkpoint(&path, &chain, &forged).unwrap(),
        CheckpointStatus::Rewritten
    );
}

#[test]
fn a_checkpoint_in_removed_segments_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.log");
    let mut log = AuditLog::open(&path, segmented(MIN_SEGMENT_BYTES, Some(1))).unwrap();
    log.append(entry(1)).unwrap();
    let early = log.checkpoint().unwrap();
    for i in 2..=1200 {
        log.append(entry(i)).unwrap();
    }
    let late = log.checkpoint().unwrap();
    assert!(late.segment > 2, "{late:?}");
    drop(log);
    let options = VerifyOptions {
        chain: ChainMode::Hmac(ChainKey::new([7; 32])),
        head: HeadCheck::Require,
    };
    let (report, status) = verify_against(&path, &options, &early).unwrap();
    assert_eq!(
        status,
        CheckpointStatus::NotKept {
            first_seq: report.first_seq
        }
    );
    let (_, status) = verify_against(&path, &options, &late).unwrap();
    assert_eq!(status, CheckpointStatus::Holds { records_after: 0 });
}
