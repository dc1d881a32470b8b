//! Full mutual attested TLS 1.3 handshakes with simulation evidence over an in-memory transport.
//!
//! `uncached`: every handshake verifies both peers' evidence (verifier cache disabled);
//! `cached`: repeated certificates hit the verifier's cache (evidence verified once).

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use coffer_ratls::{attested_certificate, client_config, server_config, AttestedVerifier};
use criterion::{criterion_group, criterion_main, Criterion};
use rustls::pki_types::ServerName;
use rustls::{ClientConnection, ServerConnection};

fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
    let mut buf = Vec::with_capacity(8192);
    while client.is_handshaking() || server.is_handshaking() {
        let mut progressed = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
            }
            server.process_new_packets().unwrap();
            progressed = true;
        }
        while server.wants_write() {
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            let mut rd = &buf[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
            }
            client.process_new_packets().unwrap();
            progressed = true;
        }
        assert!(progressed, "handshake stalled");
    }
}

fn bench(c: &mut Criterion) {
    let server_id = attested_certificate(&common::TestSimPlatform::new()).unwrap();
    let client_id = attested_certificate(&common::TestSimPlatform::new()).unwrap();
    let mut group = c.benchmark_group("ratls_mutual_handshake_sim");
    group.measurement_time(Duration::from_secs(5));
    for (name, ttl) in [
        ("uncached", Duration::ZERO),
        ("cached", Duration::from_secs(300)),
    ] {
        let verifier = |role: &str| {
            Arc::new(
                AttestedVerifier::new(
                    Arc::new(coffer_ratls::OfflineVerifier::new(
                        coffer_attest::VerifyOptions::new(std::time::SystemTime::now()),
                    )),
                    common::sim_policy(role, true),
                )
                .with_cache_ttl(ttl),
            )
        };
        let scfg = Arc::new(server_config(&server_id, verifier("workload:bench")).unwrap());
        let ccfg = Arc::new(client_config(&client_id, verifier("keyd")).unwrap());
        let name_ = ServerName::try_from("coffer.invalid").unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut client = ClientConnection::new(ccfg.clone(), name_.clone()).unwrap();
                let mut server = ServerConnection::new(scfg.clone()).unwrap();
                pump(&mut client, &mut server);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
