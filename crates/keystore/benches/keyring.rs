//! The cryptographic cost inside one KMS call, without gRPC: what the plugin spends per
//! Encrypt/Decrypt on the key itself, and what a start or a reload spends unsealing keys.
//!
//! `cargo bench -p coffer-keystore`

use std::hint::black_box;
use std::sync::Arc;

use coffer_keystore::Keystore;
use coffer_platform::sim::SimPlatform;
use criterion::{criterion_group, criterion_main, Criterion};

fn keystore_with(keys: usize) -> (tempfile::TempDir, Keystore) {
    let dir = tempfile::tempdir().unwrap();
    let platform = Arc::new(SimPlatform::open_or_create(dir.path()).unwrap());
    let ks = Keystore::new(dir.path(), platform);
    ks.init().unwrap();
    for _ in 1..keys {
        ks.rotate().unwrap();
    }
    (dir, ks)
}

fn kms_operations(c: &mut Criterion) {
    let (_dir, ks) = keystore_with(3);
    let ring = ks.load().unwrap();
    let seed = [7u8; 32];
    let ciphertext = ring.encrypt(&seed).unwrap();
    let key_id = ring.primary_id().to_string();
    c.bench_function("keyring encrypt 32-byte seed", |b| {
        b.iter(|| ring.encrypt(black_box(&seed)).unwrap())
    });
    c.bench_function("keyring decrypt 32-byte seed", |b| {
        b.iter(|| ring.decrypt(Some(&key_id), black_box(&ciphertext)).unwrap())
    });
    c.bench_function("primary self-test (Status after the cache expires)", |b| {
        b.iter(|| ring.self_test().unwrap())
    });
}

fn loading(c: &mut Criterion) {
    for keys in [1, 10] {
        let (_dir, ks) = keystore_with(keys);
        c.bench_function(
            &format!("keystore load + unseal + self-test, {keys} KEKs"),
            |b| b.iter(|| ks.load().unwrap()),
        );
    }
}

criterion_group!(benches, kms_operations, loading);
criterion_main!(benches);
