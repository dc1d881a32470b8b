//! The LibOS deploy files (deploy/gramine, deploy/occlum) use only keys their stated LibOS
//! release reads, name paths that are mounted and allowed, and run `kms serve --listen-tcp`
//! with flags the real binary accepts. A key a LibOS does not know is silently ignored by it
//! (or refuses the build), so these checks are the only place such a mistake shows before a
//! real enclave.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::coffer;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

fn read(rel: &str) -> String {
    fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The address `coffer kms bridge` in deploy/static-pod-sgx.yaml forwards to.
const ENCLAVE_ADDR: &str = "127.0.0.1:7700";

// ---------------------------------------------------------------------------------------------
// Gramine
// ---------------------------------------------------------------------------------------------

/// Manifest keys of Gramine v1.8 (gramineproject/gramine, tag v1.8,
/// Documentation/manifest-syntax.rst; `loader.entrypoint.uri` replaced `loader.entrypoint`
/// before 1.8). Only keys a Coffer manifest could use, and none whose name changed across
/// releases (e.g. `sgx.require_*` vs `sgx.cpu_features.*`): a new key here needs checking
/// against that file first.
const GRAMINE_KEYS: &[&str] = &[
    "libos.entrypoint",
    "libos.check_invalid_pointers",
    "loader.entrypoint.uri",
    "loader.log_level",
    "loader.log_file",
    "loader.argv",
    "loader.argv_src_file",
    "loader.insecure__use_cmdline_argv",
    "loader.insecure__use_host_env",
    "loader.uid",
    "loader.gid",
    "loader.env",
    "loader.env_src_file",
    "fs.root",
    "fs.mounts",
    "fs.start_dir",
    "fs.insecure__keys",
    "sys.stack.size",
    "sys.brk.max_size",
    "sys.enable_sigterm_injection",
    "sys.experimental__enable_flock",
    "sys.disallow_subprocesses",
    "sys.enable_extra_runtime_domain_names_conf",
    "sys.insecure__allow_eventfd",
    "sgx.debug",
    "sgx.edmm_enable",
    "sgx.enclave_size",
    "sgx.max_threads",
    "sgx.remote_attestation",
    "sgx.isvprodid",
    "sgx.isvsvn",
    "sgx.trusted_files",
    "sgx.allowed_files",
    "sgx.file_check_policy",
    "sgx.use_exinfo",
    "sgx.insecure__rpc_thread_num",
    "sgx.seal_key.flags_mask",
    "sgx.seal_key.xfrm_mask",
    "sgx.seal_key.misc_mask",
];

/// Keys of one `fs.mounts` entry in Gramine v1.8 (same file, "FS mount points").
const GRAMINE_MOUNT_KEYS: &[&str] = &["type", "path", "uri", "key_name"];

/// Renders the Jinja placeholders of the template with the values `gramine-manifest` gives on
/// a Debian/Ubuntu host (`-Darch_libdir=/lib/x86_64-linux-gnu -Dlog_level=error`).
fn render_gramine(template: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find("}}")
            .ok_or("unclosed {{ in the template")?;
        let name = rest[start + 2..start + end].trim();
        out.push_str(match name {
            "gramine.libos" => "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so",
            "gramine.runtimedir()" => "/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc",
            "arch_libdir" => "/lib/x86_64-linux-gnu",
            "log_level" => "error",
            other => return Err(format!("unknown template placeholder {{{{ {other} }}}}")),
        });
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Dotted keys of every leaf (a value that is not a table) of `table`.
fn leaf_keys(prefix: &str, table: &dyn toml_edit::TableLike, out: &mut Vec<String>) {
    for (key, item) in table.iter() {
        let path = if prefix.is_empty() {
            key.to_string()
        } else {
            format!("{prefix}.{key}")
        };
        match item.as_table_like() {
            // loader.env is a table of arbitrary variable names.
            Some(inner) if path != "loader.env" => leaf_keys(&path, inner, out),
            _ => out.push(path),
        }
    }
}

/// The item at dotted `key`, if any (indexing a `DocumentMut` panics on a missing key).
fn toml_item<'a>(doc: &'a toml_edit::DocumentMut, key: &str) -> Option<&'a toml_edit::Item> {
    key.split('.')
        .try_fold(doc.as_item(), |item, part| item.get(part))
}

fn toml_strings(doc: &toml_edit::DocumentMut, key: &str) -> Vec<String> {
    let Some(item) = toml_item(doc, key) else {
        return Vec::new();
    };
    match item.as_array() {
        Some(array) => array
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        None => item.as_str().map(str::to_string).into_iter().collect(),
    }
}

/// What is wrong with a rendered Gramine manifest; the argv (without `coffer`) on success.
fn gramine_problems(rendered: &str) -> (Vec<String>, Vec<String>) {
    let mut problems = Vec::new();
    let doc: toml_edit::DocumentMut = match rendered.parse() {
        Ok(doc) => doc,
        Err(e) => return (vec![format!("not TOML: {e}")], Vec::new()),
    };
    let mut keys = Vec::new();
    leaf_keys("", doc.as_table(), &mut keys);
    for key in &keys {
        if !GRAMINE_KEYS.contains(&key.as_str()) {
            problems.push(format!("{key} is not a Gramine v1.8 manifest key"));
        }
    }
    for key in [
        "loader.argv",
        "sys.experimental__enable_flock",
        "sgx.remote_attestation",
    ] {
        if !keys.iter().any(|k| k == key) {
            problems.push(format!("{key} is missing"));
        }
    }
    if toml_item(&doc, "sys.experimental__enable_flock").and_then(|i| i.as_bool()) != Some(true) {
        problems.push("the keystore's flock needs sys.experimental__enable_flock = true".into());
    }
    if toml_item(&doc, "sgx.remote_attestation").and_then(|i| i.as_str()) != Some("dcap") {
        problems.push("sgx.remote_attestation must be \"dcap\"".into());
    }
    if toml_item(&doc, "sgx.debug").and_then(|i| i.as_bool()) != Some(false) {
        problems.push("sgx.debug must be false: Coffer policies refuse debug enclaves".into());
    }

    // Mounts: (uri without file:, path) pairs, each key known.
    let mut mounts = Vec::new();
    if let Some(array) = toml_item(&doc, "fs.mounts").and_then(|i| i.as_array()) {
        for entry in array {
            let Some(table) = entry.as_inline_table() else {
                problems.push("an fs.mounts entry is not a table".into());
                continue;
            };
            for (key, _) in table.iter() {
                if !GRAMINE_MOUNT_KEYS.contains(&key) {
                    problems.push(format!("fs.mounts entry key {key} is not in Gramine v1.8"));
                }
            }
            let path = table.get("path").and_then(|v| v.as_str()).unwrap_or("");
            let uri = table.get("uri").and_then(|v| v.as_str()).unwrap_or("");
            mounts.push((
                uri.trim_start_matches("file:").to_string(),
                path.to_string(),
            ));
        }
    }
    let trusted = toml_strings(&doc, "sgx.trusted_files");
    let allowed = toml_strings(&doc, "sgx.allowed_files");
    let covered = |list: &[String], path: &str| {
        list.iter().any(|entry| {
            let entry = entry.trim_start_matches("file:");
            entry == path || (entry.ends_with('/') && format!("{path}/").starts_with(entry))
        })
    };
    // The path inside the enclave maps to a host path through the mount whose path prefixes it.
    let host_path = |inside: &str| -> Option<String> {
        mounts
            .iter()
            .filter(|(uri, path)| {
                !uri.is_empty() && (inside == path || inside.starts_with(&format!("{path}/")))
            })
            .max_by_key(|(_, path)| path.len())
            .map(|(uri, path)| format!("{uri}{}", &inside[path.len()..]))
    };

    let entry = toml_strings(&doc, "libos.entrypoint");
    match entry.first().and_then(|e| host_path(e)) {
        Some(host) if covered(&trusted, &host) => {
            // The image (deploy/Dockerfile) must put the binary where the manifest mounts it.
            if !read("deploy/Dockerfile").contains(&format!(" {host}\n")) {
                problems.push(format!(
                    "deploy/Dockerfile does not install coffer at {host}"
                ));
            }
        }
        Some(host) => problems.push(format!("the entrypoint {host} is not a trusted file")),
        None => problems.push("libos.entrypoint is not under any fs.mounts path".into()),
    }

    let argv = toml_strings(&doc, "loader.argv");
    if argv.first().map(String::as_str) != Some("coffer") {
        problems.push(format!("loader.argv must start with coffer: {argv:?}"));
        return (problems, Vec::new());
    }
    let args = argv[1..].to_vec();
    if let Some(state) = arg_value(&args, "--state-dir") {
        match host_path(&state) {
            Some(host) if covered(&allowed, &host) => {}
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
// Occlum
// ---------------------------------------------------------------------------------------------

/// Every key path of Occlum.json that Occlum v0.31 reads: the serde structs
/// `OcclumConfiguration` and friends of occlum/occlum tools/gen_internal_conf/src/main.rs as of
/// the v0.31 line (read at commit 012eb4edf942a27e20d1c44a4a81cd59385ceebb)
/// (`resource_limits`, `process`, `metadata`, `feature`, `mount`), with `env.default` /
/// `env.untrusted` as in its etc/template/Occlum.json. `[]` stands for any array element.
const OCCLUM_KEYS: &[&str] = &[
    "resource_limits.init_num_of_threads",
    "resource_limits.max_num_of_threads",
    "resource_limits.kernel_space_heap_size",
    "resource_limits.kernel_space_heap_max_size",
    "resource_limits.kernel_space_stack_size",
    "resource_limits.user_space_size",
    "resource_limits.user_space_max_size",
    "process.default_stack_size",
    "process.default_heap_size",
    "process.default_mmap_size",
    "entry_points.[]",
    "env.default.[]",
    "env.untrusted.[]",
    "metadata.product_id",
    "metadata.version_number",
    "metadata.debuggable",
    "metadata.disable_log",
    "metadata.enable_kss",
    "metadata.family_id.high",
    "metadata.family_id.low",
    "metadata.ext_prod_id.high",
    "metadata.ext_prod_id.low",
    "feature.amx",
    "feature.pkru",
    "feature.io_uring",
    "feature.enable_edmm",
    "feature.enable_posix_shm",
];

/// Keys of a mount entry (`OcclumMount`, `OcclumMountOptions`, same file); layers nest mounts.
const OCCLUM_MOUNT_KEYS: &[&str] = &[
    "type",
    "target",
    "source",
    "options.MAC",
    "options.layers",
    "options.temporary",
    "options.cache_size",
    "options.disk_size",
];

/// Required fields (no `#[serde(default)]` in gen_internal_conf): a missing one fails the build.
const OCCLUM_REQUIRED: &[&str] = &[
    "resource_limits.max_num_of_threads",
    "resource_limits.kernel_space_heap_size",
    "resource_limits.kernel_space_stack_size",
    "resource_limits.user_space_size",
    "process.default_stack_size",
    "process.default_heap_size",
    "process.default_mmap_size",
    "metadata.product_id",
    "metadata.version_number",
    "metadata.debuggable",
    "metadata.enable_kss",
    "metadata.family_id.high",
    "metadata.family_id.low",
    "metadata.ext_prod_id.high",
    "metadata.ext_prod_id.low",
];

/// Fields gen_internal_conf parses with `parse_memory_size`: a number and KB/MB/GB.
fn is_occlum_size(value: &serde_json::Value) -> bool {
    value.as_str().is_some_and(|s| {
        let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && ["KB", "MB", "GB"].iter().any(|unit| s.ends_with(unit))
    })
}

fn json_leaf_keys(
    prefix: &str,
    value: &serde_json::Value,
    out: &mut Vec<(String, serde_json::Value)>,
) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                json_leaf_keys(&path, inner, out);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for item in items {
                json_leaf_keys(&format!("{prefix}.[]"), item, out);
            }
        }
        _ => out.push((prefix.to_string(), value.clone())),
    }
}

fn occlum_mount_problems(mount: &serde_json::Value, problems: &mut Vec<String>) {
    let mut keys = Vec::new();
    json_leaf_keys("", mount, &mut keys);
    for (key, _) in &keys {
        if key.starts_with("options.layers.") {
            continue;
        }
        if !OCCLUM_MOUNT_KEYS.contains(&key.as_str()) {
            problems.push(format!("mount key {key} is not read by Occlum v0.31"));
        }
    }
    for layer in mount["options"]["layers"].as_array().into_iter().flatten() {
        occlum_mount_problems(layer, problems);
    }
}

/// What is wrong with an Occlum.json; the mount targets on success.
fn occlum_problems(text: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut problems = Vec::new();
    let config: serde_json::Value = match serde_json::from_str(text) {
        Ok(config) => config,
        Err(e) => return (vec![format!("not JSON: {e}")], Vec::new()),
    };
    let mut keys = Vec::new();
    let mut without_mounts = config.clone();
    if let Some(map) = without_mounts.as_object_mut() {
        map.remove("mount");
    }
    json_leaf_keys("", &without_mounts, &mut keys);
    for (key, value) in &keys {
        if !OCCLUM_KEYS.contains(&key.as_str()) && !key.ends_with(".untrusted") {
            problems.push(format!("{key} is not read by Occlum v0.31"));
        }
        let is_size = key.ends_with("_size") && !key.ends_with("max_num_of_threads");
        if is_size && !is_occlum_size(value) {
            problems.push(format!(
                "{key} must be a plain string such as \"512MB\", not {value}"
            ));
        }
    }
    for key in OCCLUM_REQUIRED {
        if !keys.iter().any(|(k, _)| k == key) {
            problems.push(format!("{key} is missing (Occlum v0.31 requires it)"));
        }
    }
    if config["metadata"]["debuggable"] != serde_json::Value::Bool(false) {
        problems.push("metadata.debuggable must be false: Coffer policies refuse it".into());
    }
    let mut targets = Vec::new();
    match config["mount"].as_array() {
        Some(mounts) => {
            for mount in mounts {
                occlum_mount_problems(mount, &mut problems);
                targets.push((
                    mount["target"].as_str().unwrap_or("").to_string(),
                    mount["type"].as_str().unwrap_or("").to_string(),
                ));
            }
            // gen_app_config refuses a config without a root unionfs whose sefs layer has a MAC.
            let root_ok = mounts.iter().any(|m| {
                m["target"] == "/"
                    && m["type"] == "unionfs"
                    && m["options"]["layers"].as_array().is_some_and(|l| {
                        l.iter()
                            .any(|l| l["type"] == "sefs" && l["options"].get("MAC").is_some())
                    })
            });
            if !root_ok {
                problems.push("no root unionfs with an image sefs layer (options.MAC)".into());
            }
        }
        None => problems.push("mount is missing".into()),
    }
    (problems, targets)
}

// ---------------------------------------------------------------------------------------------
// Shared
// ---------------------------------------------------------------------------------------------

fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(str::to_string)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

/// Flags `coffer kms serve --help` lists.
fn serve_flags() -> BTreeSet<String> {
    let out = coffer(&["kms", "serve", "--help"]);
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split([' ', ',', '\n'])
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_string)
        .collect()
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

/// `occlum run /bin/coffer …` in deploy/occlum/README.md, continuation lines joined.
fn occlum_run_args(readme: &str) -> Vec<String> {
    let joined = readme.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with("occlum run /bin/coffer"))
        .expect("deploy/occlum/README.md shows `occlum run /bin/coffer …`");
    line.split_whitespace()
        .skip(3)
        .map(str::to_string)
        .collect()
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
