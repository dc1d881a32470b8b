//! The LibOS deploy files (deploy/gramine, deploy/occlum) use only keys their stated LibOS
//! release reads, name paths that are mounted and allowed, and run `kms serve --listen-tcp`
//! with flags the real binary accepts. A key a LibOS does not know is silently ignored by it
//! (or refuses the build), so these checks are the only place such a mistake shows before a
//! real enclave.

mod common;

use std::collections::BTreeSet;

use common::deploy::{
    arg_value, help_flags, occlum_problems, occlum_run_args, read, render_gramine, repo_root,
    toml_item, GramineManifest,
};

/// The address `coffer kms bridge` in deploy/static-pod-sgx.yaml forwards to.
const ENCLAVE_ADDR: &str = "127.0.0.1:7700";

// ---------------------------------------------------------------------------------------------
// Gramine
// ---------------------------------------------------------------------------------------------

/// What is wrong with a rendered Gramine manifest; the argv (without `coffer`) on success.
fn gramine_problems(rendered: &str) -> (Vec<String>, Vec<String>) {
    let (manifest, mut problems) = match GramineManifest::parse(rendered) {
        Ok(parsed) => parsed,
        Err(e) => return (vec![e], Vec::new()),
    };
    let doc = &manifest.doc;
    if !manifest
        .keys
        .iter()
        .any(|k| k == "sys.experimental__enable_flock")
    {
        problems.push("sys.experimental__enable_flock is missing".into());
    }
    if toml_item(doc, "sys.experimental__enable_flock").and_then(|i| i.as_bool()) != Some(true) {
        problems.push("the keystore's flock needs sys.experimental__enable_flock = true".into());
    }
    // The image (deploy/Dockerfile) must put the binary where the manifest mounts it.
    if let Some(host) = manifest.entrypoint_host() {
        if !read("deploy/Dockerfile").contains(&format!(" {host}\n")) {
            problems.push(format!(
                "deploy/Dockerfile does not install coffer at {host}"
            ));
        }
    }

    let Some(args) = manifest.coffer_args(&mut problems) else {
        return (problems, Vec::new());
    };
    if let Some(state) = arg_value(&args, "--state-dir") {
        match manifest.host_path(&state) {
            Some(host) if manifest.is_allowed(&host) => {}
            Some(host) => problems.push(format!(
                "--state-dir {state} (host {host}) is not in sgx.allowed_files: keystore.lock and the keystore are written there"
            )),
            None => problems.push(format!("--state-dir {state} is not mounted")),
        }
    } else {
        problems.push("loader.argv has no --state-dir".into());
    }
    (problems, args)
}

// ---------------------------------------------------------------------------------------------
// Shared (the LibOS parsers are in common/deploy.rs, shared with deploy_workloads.rs)
// ---------------------------------------------------------------------------------------------

/// Flags `coffer kms serve --help` lists.
fn serve_flags() -> BTreeSet<String> {
    help_flags(&["kms", "serve"])
}

/// What is wrong with the arguments of `coffer` inside an enclave.
fn enclave_args_problems(args: &[String], flags: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    if args.len() < 2 || args[0] != "kms" || args[1] != "serve" {
        problems.push(format!("the enclave must run `kms serve`, not {args:?}"));
        return problems;
    }
    for arg in &args[2..] {
        if let Some(flag) = arg.strip_prefix("--") {
            let name = format!("--{}", flag.split('=').next().unwrap_or(""));
            if !flags.contains(&name) {
                problems.push(format!("`coffer kms serve` has no flag {name}"));
            }
        }
    }
    match arg_value(args, "--listen-tcp") {
        Some(addr) if addr == ENCLAVE_ADDR => {}
        Some(addr) => problems.push(format!(
            "--listen-tcp {addr} is not {ENCLAVE_ADDR}, where the bridge forwards"
        )),
        None => problems.push(
            "no --listen-tcp: inside an SGX LibOS the host cannot reach a unix socket".into(),
        ),
    }
    for refused in ["--socket", "--listen-tcp-allow-remote", "--dev"] {
        if args
            .iter()
            .any(|a| a == refused || a.starts_with(&format!("{refused}=")))
        {
            problems.push(format!(
                "{refused} does not belong in an enclave deployment"
            ));
        }
    }
    problems
}

#[test]
fn gramine_manifest_uses_gramine_1_8_keys_and_starts_the_plugin() {
    let template = read("deploy/gramine/coffer.manifest.template");
    let rendered = render_gramine(&template).unwrap();
    let (mut problems, args) = gramine_problems(&rendered);
    problems.extend(enclave_args_problems(&args, &serve_flags()));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(read("deploy/gramine/README.md").contains("Gramine v1.8"));
}

#[test]
fn occlum_json_uses_occlum_0_31_keys_and_starts_the_plugin() {
    assert!(
        !repo_root()
            .join("deploy/occlum/Occlum.yaml.snippet")
            .exists(),
        "released Occlum reads Occlum.json only"
    );
    let (mut problems, targets) = occlum_problems(&read("deploy/occlum/Occlum.json"));
    let readme = read("deploy/occlum/README.md");
    assert!(readme.contains("Occlum v0.31"));
    let args = occlum_run_args(&readme);
    problems.extend(enclave_args_problems(&args, &serve_flags()));
    match arg_value(&args, "--state-dir") {
        Some(state) if targets.iter().any(|(t, ty)| *t == state && ty == "hostfs") => {}
        other => problems.push(format!(
            "--state-dir {other:?} is not a hostfs mount of Occlum.json: the keystore would not survive the instance"
        )),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The bridge of deploy/static-pod-sgx.yaml forwards to where both LibOS configs listen, and
/// the enclave container gets the SGX devices.
#[test]
fn sgx_static_pod_bridges_to_the_enclave_address() {
    let pod = read("deploy/static-pod-sgx.yaml");
    let enclave: Vec<&str> = pod
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- --enclave="))
        .collect();
    assert_eq!(enclave, [ENCLAVE_ADDR], "the bridge's --enclave");
    for resource in ["sgx.intel.com/enclave: 1", "sgx.intel.com/provision: 1"] {
        assert!(pod.contains(resource), "{resource}");
    }
    assert!(
        !pod.contains("hostNetwork: true"),
        "with hostNetwork any node process reaches the enclave's unauthenticated port"
    );
}

#[test]
fn the_checks_catch_each_mistake() {
    let flags = serve_flags();
    let template = read("deploy/gramine/coffer.manifest.template");
    let good = render_gramine(&template).unwrap();
    assert!(render_gramine("x = \"{{ nope }}\"").is_err());
    let gramine_cases = [
        (
            "sys.experimental__enable_flock = true",
            "sys.experimental__enable_flock = false",
        ),
        (
            "sgx.remote_attestation = \"dcap\"",
            "sgx.remote_attestation = \"none\"",
        ),
        ("sgx.max_threads = 16", "sgx.thread_num = 16"),
        ("\"file:/var/lib/coffer/\",\n]", "]"),
        (
            "path = \"/var/lib/coffer\" }",
            "path = \"/var/lib/coffer\", mode = 1 }",
        ),
        ("\"file:/usr/local/bin/coffer\",\n", ""),
    ];
    for (from, to) in gramine_cases {
        assert!(good.contains(from), "{from}");
        let (problems, _) = gramine_problems(&good.replacen(from, to, 1));
        assert!(!problems.is_empty(), "not caught: {from} -> {to}");
    }
    let (_, args) = gramine_problems(&good);
    let words = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<_>>();
    for bad in [
        "kms serve --platform sgx-gramine",
        "kms serve --listen-tcp 127.0.0.1:7701",
        "kms serve --listen-tcp 127.0.0.1:7700 --no-such-flag",
        "kms serve --listen-tcp 127.0.0.1:7700 --socket /run/kms.sock",
        "keyd serve --listen-tcp 127.0.0.1:7700",
    ] {
        assert!(
            !enclave_args_problems(&words(bad), &flags).is_empty(),
            "{bad}"
        );
    }
    assert!(enclave_args_problems(&args, &flags).is_empty());

    let good = read("deploy/occlum/Occlum.json");
    let occlum_cases = [
        (
            "\"user_space_size\": \"512MB\"",
            "\"user_space_size\": {\"init\": \"512MB\"}",
        ),
        (
            "\"user_space_size\": \"512MB\"",
            "\"user_space_size\": \"512 megs\"",
        ),
        ("\"debuggable\": false", "\"debuggable\": true"),
        (
            "\"enable_kss\": false,",
            "\"enable_kss\": false, \"untrusted_unix_socks\": [],",
        ),
        (
            "\"default_mmap_size\": \"256MB\"",
            "\"default_mmap_sz\": \"256MB\"",
        ),
        ("\"MAC\": \"\"", "\"mac\": \"\""),
    ];
    for (from, to) in occlum_cases {
        assert!(good.contains(from), "{from}");
        let (problems, _) = occlum_problems(&good.replacen(from, to, 1));
        assert!(!problems.is_empty(), "not caught: {from} -> {to}");
    }
    assert!(
        !occlum_problems("resource_limits:\n  user_space_size: 1MB\n")
            .0
            .is_empty()
    );
}
