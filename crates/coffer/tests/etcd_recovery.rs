//! Disaster recovery: `coffer etcd decrypt` reads what kube-apiserver stored in etcd. The values
//! are built here by an independent implementation of the API server's write path (ring for the
//! cryptography, a separately declared protobuf message), with the DEK source wrapped by the
//! real plugin over gRPC.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::keyd::{create_keyd_data, free_addr, sim_signer, write_keyd_policy, KeydProcess};
use common::*;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::hkdf;

#[derive(Clone, PartialEq, prost::Message)]
struct StoredObject {
    #[prost(bytes = "vec", tag = "1")]
    encrypted_data: Vec<u8>,
    #[prost(string, tag = "2")]
    key_id: String,
    #[prost(bytes = "vec", tag = "3")]
    encrypted_dek_source: Vec<u8>,
    #[prost(map = "string, bytes", tag = "4")]
    annotations: std::collections::HashMap<String, Vec<u8>>,
    #[prost(int32, tag = "5")]
    source_type: i32,
}

struct AesKeyLen;
impl hkdf::KeyType for AesKeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn seal(key: &[u8], aad: &str, plaintext: &[u8]) -> Vec<u8> {
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).unwrap());
    let nonce: [u8; 12] = rand::random();
    let mut body = plaintext.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::from(aad.as_bytes()),
        &mut body,
    )
    .unwrap();
    [nonce.as_slice(), &body].concat()
}

/// What kube-apiserver writes with the HKDF seed scheme (type 1).
async fn apiserver_write_seed(client: &mut V2Client, etcd_key: &str, object: &[u8]) -> Vec<u8> {
    let seed: [u8; 32] = rand::random();
    let wrapped = encrypt(client, &seed).await;
    let info: [u8; 32] = rand::random();
    let mut dek = [0u8; 32];
    hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &seed)
        .expand(&[&info], AesKeyLen)
        .unwrap()
        .fill(&mut dek)
        .unwrap();
    let encrypted_data = [info.as_slice(), &seal(&dek, etcd_key, object)].concat();
    stored_value(encrypted_data, wrapped, 1)
}

/// What older kube-apiservers write with a random DEK (type 0).
async fn apiserver_write_dek(client: &mut V2Client, etcd_key: &str, object: &[u8]) -> Vec<u8> {
    let dek: [u8; 32] = rand::random();
    let wrapped = encrypt(client, &dek).await;
    stored_value(seal(&dek, etcd_key, object), wrapped, 0)
}

fn stored_value(
    encrypted_data: Vec<u8>,
    wrapped: coffer_proto::v2::EncryptResponse,
    source_type: i32,
) -> Vec<u8> {
    let obj = StoredObject {
        encrypted_data,
        key_id: wrapped.key_id,
        encrypted_dek_source: wrapped.ciphertext,
        annotations: Default::default(),
        source_type,
    };
    [
        b"k8s:enc:kms:v2:coffer:".as_slice(),
        &prost::Message::encode_to_vec(&obj),
    ]
    .concat()
}

fn etcd_decrypt(
    plugin: &Plugin,
    value: &[u8],
    etcd_key: &str,
    extra: &[&str],
) -> std::process::Output {
    etcd_decrypt_as(&plugin.state_dir(), value, etcd_key, extra)
}

/// `coffer etcd decrypt` on the sim platform whose state is `state`, with `value` as its input
/// file (written next to `state`).
fn etcd_decrypt_as(
    state: &Path,
    value: &[u8],
    etcd_key: &str,
    extra: &[&str],
) -> std::process::Output {
    let input = state.with_file_name(format!("value-{}", rand::random::<u32>()));
    fs::write(&input, value).unwrap();
    Command::new(coffer_bin())
        .args([
            "etcd",
            "decrypt",
            "--platform",
            "sim",
            "--etcd-key",
            etcd_key,
        ])
        .arg("--state-dir")
        .arg(state)
        .arg("--input")
        .arg(&input)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test]
async fn decrypts_what_the_api_server_stored_in_both_modes_and_after_rotation() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let key = "/registry/secrets/default/db";
    let object =
        b"k8s\0\n\x0c\n\x02v1\x12\x06Secret\x12 password=correct horse battery staple".to_vec();

    let seeded = apiserver_write_seed(&mut client, key, &object).await;
    let legacy = apiserver_write_dek(&mut client, key, &object).await;
    for (name, value) in [("seed", &seeded), ("dek", &legacy)] {
        let out = etcd_decrypt(&plugin, value, key, &[]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, object, "{name}");
    }

    // After rotation: old values still decrypt, new ones use the new KEK.
    let first = status(&mut client).await.key_id;
    assert!(plugin.keys(&["rotate"]).status.success());
    wait_for_status(&mut client, |s| s.key_id != first).await;
    let newer = apiserver_write_seed(&mut client, key, &object).await;
    for value in [&seeded, &legacy, &newer] {
        let out = etcd_decrypt(&plugin, value, key, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, object);
    }

    // `etcdctl get --print-value-only` appends a newline; that is tolerated.
    let with_newline = [seeded.as_slice(), b"\n"].concat();
    let out = etcd_decrypt(&plugin, &with_newline, key, &[]);
    assert_eq!(
        out.stdout,
        object,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `etcdctl get -w json` output carries the key too.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let json = serde_json::json!({"kvs": [{"key": b64.encode(key), "value": b64.encode(&seeded)}]});
    let input = plugin.dir.path().join("etcd.json");
    fs::write(&input, json.to_string()).unwrap();
    let out = Command::new(coffer_bin())
        .args([
            "etcd",
            "decrypt",
            "--platform",
            "sim",
            "--input-format",
            "etcdctl-json",
        ])
        .arg("--state-dir")
        .arg(plugin.state_dir())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(
        out.stdout,
        object,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // --output writes a new 0600 file and never overwrites.
    let target = plugin.dir.path().join("object.bin");
    let out = etcd_decrypt(
        &plugin,
        &seeded,
        key,
        &["--output", target.to_str().unwrap()],
    );
    assert!(out.status.success());
    assert_eq!(fs::read(&target).unwrap(), object);
    let again = etcd_decrypt(
        &plugin,
        &seeded,
        key,
        &["--output", target.to_str().unwrap()],
    );
    assert_eq!(again.status.code(), Some(1));
}

#[tokio::test]
async fn wrong_key_tampering_and_foreign_values_are_refused() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let key = "/registry/secrets/default/db";
    let value = apiserver_write_seed(&mut client, key, b"k8s\0object").await;

    let out = etcd_decrypt(&plugin, &value, "/registry/secrets/default/other", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd key"), "{err}");
    assert!(out.stdout.is_empty());

    let mut tampered = value.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    let out = etcd_decrypt(&plugin, &tampered, key, &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = etcd_decrypt(&plugin, b"k8s\0\n\x0c\n\x02v1\x12\x06Secret", key, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a KMS v2 value"));

    let out = etcd_decrypt(&plugin, &value[..value.len() / 2], key, &[]);
    assert_eq!(out.status.code(), Some(1));
}

/// Exactly what `etcdctl get KEY --print-value-only` prints: the value's bytes and a newline.
fn etcdctl_print_value_only(value: &[u8]) -> Vec<u8> {
    [value, b"\n"].concat()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn etcdctl_output_with_its_newline_reports_the_real_cause() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let key = "/registry/secrets/default/db";
    let object = b"k8s\0object".to_vec();
    let value = apiserver_write_seed(&mut client, key, &object).await;
    let printed = etcdctl_print_value_only(&value);

    let out = etcd_decrypt(&plugin, &printed, key, &[]);
    assert_eq!(out.stdout, object, "{}", stderr_of(&out));

    // A wrong etcd key is an authentication failure for that key, not a corrupt protobuf.
    let out = etcd_decrypt(&plugin, &printed, "/registry/secrets/default/other", &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains("wrong --etcd-key")
            && err.contains("/registry/secrets/default/other")
            && !err.contains("protobuf"),
        "{err}"
    );

    // A value wrapped by another plugin's KEK names that KEK and what this keystore holds.
    let other = Plugin::start(&[]).await;
    let mut other_client = other.v2().await;
    let foreign = apiserver_write_seed(&mut other_client, key, &object).await;
    let foreign_kek = status(&mut other_client).await.key_id;
    let ours = status(&mut client).await.key_id;
    let out = etcd_decrypt(&plugin, &etcdctl_print_value_only(&foreign), key, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&foreign_kek)
            && err.contains("does not hold")
            && err.contains(&format!("{ours} (primary)"))
            && !err.contains("protobuf"),
        "{err}"
    );

    // A retired KEK is named as retired.
    assert!(plugin.keys(&["rotate"]).status.success());
    let retire = plugin.keys(&["retire", &ours, "--confirm"]);
    assert!(retire.status.success(), "{}", stderr_of(&retire));
    let out = etcd_decrypt(&plugin, &printed, key, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&ours) && err.contains("retired at") && !err.contains("protobuf"),
        "{err}"
    );
}

#[tokio::test]
async fn a_value_that_really_ends_in_a_newline_byte_is_kept_whole() {
    let plugin = Plugin::start(&[]).await;
    let mut client = plugin.v2().await;
    let key = "/registry/secrets/default/db";
    let object = b"k8s\0object".to_vec();
    let dek: [u8; 32] = rand::random();
    let wrapped = encrypt(&mut client, &dek).await;
    // With AES_GCM_KEY (0, not serialised) the annotations come last, so this value's last
    // byte is the annotation's trailing 0x0a.
    let obj = StoredObject {
        encrypted_data: seal(&dek, key, &object),
        key_id: wrapped.key_id,
        encrypted_dek_source: wrapped.ciphertext,
        annotations: [("note.example.com".to_string(), b"ends in\n".to_vec())].into(),
        source_type: 0,
    };
    let value = [
        b"k8s:enc:kms:v2:coffer:".as_slice(),
        &prost::Message::encode_to_vec(&obj),
    ]
    .concat();
    assert_eq!(value.last(), Some(&b'\n'));
    for input in [value.clone(), etcdctl_print_value_only(&value)] {
        let out = etcd_decrypt(&plugin, &input, key, &[]);
        assert_eq!(out.stdout, object, "{}", stderr_of(&out));
    }
}

#[test]
fn a_directory_or_empty_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let init = coffer(&[
        "keys",
        "init",
        "--platform",
        "sim",
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(init.status.success(), "{}", stderr_of(&init));
    let run = |input: Option<&std::path::Path>| {
        let mut cmd = Command::new(coffer_bin());
        cmd.args(["etcd", "decrypt", "--platform", "sim"])
            .args(["--etcd-key", "/registry/secrets/default/db"])
            .arg("--state-dir")
            .arg(&state)
            .stdin(std::process::Stdio::null());
        if let Some(input) = input {
            cmd.arg("--input").arg(input);
        }
        cmd.output().unwrap()
    };

    let out = run(Some(dir.path()));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("--input {} is a directory", dir.path().display())),
        "{err}"
    );

    let empty = dir.path().join("db.value");
    fs::write(&empty, b"").unwrap();
    let out = run(Some(&empty));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(
        err.contains(&format!("--input {} is empty", empty.display())),
        "{err}"
    );

    let out = run(None);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("stdin is empty"), "{err}");
}

/// Service mode: a real keyd (sim) with keyring `cluster-a`, a real `kms serve --keyd` that
/// wraps the API server's DEK seeds through it, and two would-be recoverers: `recovery`, whose
/// role keyd grants unwrap, and `auditor`, whose role keyd grants only status.
struct ServiceMode {
    dir: tempfile::TempDir,
    keyd: KeydProcess,
    keyd_policy: std::path::PathBuf,
    plugin: Plugin,
}

const KEYRING: &str = "cluster-a";

impl ServiceMode {
    async fn start() -> ServiceMode {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("keyd");
        create_keyd_data(&data, &[KEYRING]);
        let plugin_dir = tempfile::tempdir().unwrap();
        let role = |name: &str, state: &Path| {
            format!(
                "  - name: {name}\n    sim: {{ signer: [\"{}\"] }}\n",
                sim_signer(state)
            )
        };
        let policy = dir.path().join("policy.yaml");
        fs::write(
            &policy,
            format!(
                "version: 1\nallow_simulation: true\nroles:\n{}{}{}",
                role("kms-plugin", &plugin_dir.path().join("state")),
                role("recovery", &dir.path().join("recovery")),
                role("auditor", &dir.path().join("auditor")),
            ),
        )
        .unwrap();
        let config = dir.path().join("keyd.yaml");
        fs::write(
            &config,
            format!(
                "keyrings:\n  {KEYRING}:\n    wrap: [\"kms-plugin\"]\n    unwrap: [\"kms-plugin\", \"recovery\"]\n    status: [\"kms-plugin\", \"auditor\"]\n"
            ),
        )
        .unwrap();
        let keyd = KeydProcess::start(&data, free_addr(), &policy, &config, &[]);
        let keyd_policy = dir.path().join("keyd-policy.yaml");
        write_keyd_policy(&keyd_policy, &keyd.signer());
        let addr = keyd.addr.to_string();
        let plugin = Plugin::spawn_service_in(
            plugin_dir,
            &[
                "--keyd",
                &addr,
                "--keyd-keyring",
                KEYRING,
                "--keyd-policy",
                keyd_policy.to_str().unwrap(),
            ],
        );
        plugin.wait_ready().await;
        ServiceMode {
            dir,
            keyd,
            keyd_policy,
            plugin,
        }
    }

    /// The sim state of caller `name` (`recovery` or `auditor`).
    fn caller(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// `etcd decrypt --keyd ...` as caller `name`.
    fn decrypt_through_keyd(
        &self,
        name: &str,
        value: &[u8],
        etcd_key: &str,
    ) -> std::process::Output {
        let addr = self.keyd.addr.to_string();
        etcd_decrypt_as(
            &self.caller(name),
            value,
            etcd_key,
            &[
                "--keyd",
                &addr,
                "--keyd-keyring",
                KEYRING,
                "--keyd-policy",
                self.keyd_policy.to_str().unwrap(),
            ],
        )
    }
}

#[tokio::test]
async fn values_wrapped_by_keyd_decrypt_through_keyd_for_a_caller_granted_unwrap() {
    let service = ServiceMode::start().await;
    let mut client = service.plugin.v2().await;
    let key = "/registry/secrets/default/db";
    let object = b"k8s\0\n\x0c\n\x02v1\x12\x06Secret\x12 password=kept in keyd".to_vec();
    let seeded = apiserver_write_seed(&mut client, key, &object).await;
    let legacy = apiserver_write_dek(&mut client, key, &object).await;

    for (name, value) in [("seed", &seeded), ("dek", &legacy)] {
        let out = service.decrypt_through_keyd("recovery", value, key);
        assert!(out.status.success(), "{name}: {}", stderr_of(&out));
        assert_eq!(out.stdout, object, "{name}");
    }

    // The etcd key is still authenticated on this path.
    let out = service.decrypt_through_keyd("recovery", &seeded, "/registry/secrets/default/x");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("wrong --etcd-key"),
        "{}",
        stderr_of(&out)
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn keyd_refuses_a_caller_without_unwrap_and_the_keystore_path_points_at_keyd() {
    let service = ServiceMode::start().await;
    let mut client = service.plugin.v2().await;
    let key = "/registry/secrets/default/db";
    let value = apiserver_write_seed(&mut client, key, b"k8s\0object").await;

    // keyd grants `auditor` status only: refused, with the grant it lacks named.
    let out = service.decrypt_through_keyd("auditor", &value, key);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("keyd did not unwrap"), "{err}");
    assert!(err.contains("keyrings.cluster-a.unwrap"), "{err}");
    assert!(!err.contains("keystore"), "{err}");
    assert!(out.stdout.is_empty());

    // Without --keyd there is no keystore to use, on the service-mode plugin's node or on the
    // recovery machine: the error says keyd wrapped such values and shows the --keyd form,
    // not `keys init` (a new keystore could never decrypt them).
    sim_signer(&service.caller("recovery"));
    for state in [service.plugin.state_dir(), service.caller("recovery")] {
        let out = etcd_decrypt_as(&state, &value, key, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
        let err = stderr_of(&out);
        assert!(err.contains("wrapped by keyd"), "{err}");
        assert!(
            err.contains("--keyd HOST:PORT --keyd-keyring NAME"),
            "{err}"
        );
        assert!(!err.contains("keys init"), "{err}");
        assert!(out.stdout.is_empty());
    }

    // A standalone plugin's keystore, which does not hold keyd's KEK, says the same.
    let standalone = Plugin::start(&[]).await;
    let out = etcd_decrypt(&standalone, &value, key, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr_of(&out));
    let err = stderr_of(&out);
    assert!(err.contains("does not hold"), "{err}");
    assert!(err.contains("keyd wrapped it"), "{err}");
    assert!(
        err.contains("--keyd HOST:PORT --keyd-keyring NAME"),
        "{err}"
    );
}
