//! Sealing and opening 1,000 values (64 bytes and 4 KiB: a password and a certificate), and
//! verifying a key bundle (simulation evidence), as BENCHMARKS.md reports them.

use std::time::{Duration, SystemTime};

use coffer_attest::policy::Policy;
use coffer_attest::VerifyOptions;
use coffer_sealed::bundle::{timestamp, BundleBody, BundleKey, KeyBundle, BUNDLE_FORMAT};
use coffer_sealed::{open, seal, Binding, Location, Scope, SealedValue, SealingKeyPair};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

const VALUES: usize = 1000;

fn bindings() -> Vec<Binding> {
    (0..VALUES)
        .map(|i| {
            let location = Location {
                namespace: "prod".into(),
                secret: format!("app-{}", i / 10),
                key: format!("key-{i}"),
            };
            Binding::new(Scope::Strict, &location).unwrap()
        })
        .collect()
}

fn sealing(c: &mut Criterion) {
    let pair = SealingKeyPair::generate().unwrap();
    let bindings = bindings();
    let mut group = c.benchmark_group("sealed_values");
    group.sample_size(10);
    group.throughput(Throughput::Elements(VALUES as u64));
    for (label, len) in [("64B", 64), ("4KiB", 4096)] {
        let plaintext = vec![0x5a; len];
        group.bench_function(format!("seal_1000x{label}"), |b| {
            b.iter(|| {
                for binding in &bindings {
                    let value = seal("apps", pair.public(), binding, &plaintext).unwrap();
                    std::hint::black_box(value.to_text());
                }
            })
        });
        let texts: Vec<String> = bindings
            .iter()
            .map(|b| {
                seal("apps", pair.public(), b, &plaintext)
                    .unwrap()
                    .to_text()
            })
            .collect();
        group.bench_function(format!("open_1000x{label}"), |b| {
            b.iter(|| {
                for text in &texts {
                    let value = SealedValue::parse(text).unwrap();
                    std::hint::black_box(open(&value, &pair).unwrap());
                }
            })
        });
    }
    group.finish();
}

fn bundles(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let platform = coffer_platform::sim::SimPlatform::open_or_create(dir.path()).unwrap();
    let now = SystemTime::now();
    let keys: Vec<SealingKeyPair> = (0..3)
        .map(|_| SealingKeyPair::generate().unwrap())
        .collect();
    let body = BundleBody {
        format: BUNDLE_FORMAT,
        keyring: "apps".into(),
        instance: "keyd-0011223344556677".into(),
        issued: timestamp(now),
        expires: timestamp(now + Duration::from_secs(86400)),
        keys: keys
            .iter()
            .enumerate()
            .map(|(i, k)| BundleKey::new(k.public(), timestamp(now), i == 2))
            .collect(),
    };
    let json = KeyBundle::attest(body, &platform).unwrap().to_json();
    let policy = Policy::from_yaml(
        "version: 1\nallow_simulation: true\nroles:\n  - name: keyd\n    sim: {}\n",
    )
    .unwrap();
    let options = VerifyOptions::new(now);

    let mut group = c.benchmark_group("key_bundle");
    group.bench_function("from_json_check_pinned", |b| {
        b.iter(|| {
            let bundle = KeyBundle::from_json(&json).unwrap();
            bundle.check_pinned(now).unwrap();
        })
    });
    group.bench_function("from_json_verify_sim", |b| {
        b.iter_batched(
            || json.clone(),
            |json| {
                KeyBundle::from_json(&json)
                    .unwrap()
                    .verify(&policy, &options)
                    .unwrap()
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, sealing, bundles);
criterion_main!(benches);
