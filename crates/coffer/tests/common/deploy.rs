//! Reading the deployment files under deploy/ the way the tools that consume them do: Gramine
//! manifests and Occlum.json as their stated releases parse them, Kubernetes manifests as the
//! real kubectl decodes them, and the flags the real `coffer` accepts.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::coffer;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// The text of `rel`, a path relative to the repository root.
pub fn read(rel: &str) -> String {
    fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Manifest keys of Gramine v1.8 (gramineproject/gramine, tag v1.8,
/// Documentation/manifest-syntax.rst; `loader.entrypoint.uri` replaced `loader.entrypoint`
/// before 1.8). Only keys a Coffer manifest could use, and none whose name changed across
/// releases (e.g. `sgx.require_*` vs `sgx.cpu_features.*`): a new key here needs checking
/// against that file first.
pub const GRAMINE_KEYS: &[&str] = &[
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
pub const GRAMINE_MOUNT_KEYS: &[&str] = &["type", "path", "uri", "key_name"];

/// Renders the Jinja placeholders of the template with the values `gramine-manifest` gives on
/// a Debian/Ubuntu host (`-Darch_libdir=/lib/x86_64-linux-gnu -Dlog_level=error`).
pub fn render_gramine(template: &str) -> Result<String, String> {
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
pub fn leaf_keys(prefix: &str, table: &dyn toml_edit::TableLike, out: &mut Vec<String>) {
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
pub fn toml_item<'a>(doc: &'a toml_edit::DocumentMut, key: &str) -> Option<&'a toml_edit::Item> {
    key.split('.')
        .try_fold(doc.as_item(), |item, part| item.get(part))
}

/// The string, or the strings of the array, at dotted `key`.
pub fn toml_strings(doc: &toml_edit::DocumentMut, key: &str) -> Vec<String> {
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

/// A rendered Gramine manifest, parsed: the document, its leaf keys and its mounts.
pub struct GramineManifest {
    /// The TOML document.
    pub doc: toml_edit::DocumentMut,
    /// Dotted keys of every leaf.
    pub keys: Vec<String>,
    /// `fs.mounts`, in order.
    pub mounts: Vec<GramineMount>,
    /// `sgx.trusted_files`.
    pub trusted: Vec<String>,
    /// `sgx.allowed_files`.
    pub allowed: Vec<String>,
}

/// One `fs.mounts` entry.
pub struct GramineMount {
    /// `type` (`chroot` when absent).
    pub kind: String,
    /// `uri` without `file:` (empty for a tmpfs).
    pub uri: String,
    /// `path` inside the enclave.
    pub path: String,
}

impl GramineManifest {
    /// Parses `rendered` and checks what every Coffer manifest must satisfy: only Gramine v1.8
    /// keys (mount entries included), `loader.argv` and DCAP remote attestation present, a
    /// production enclave, and an entry point that is a trusted file. The problems found go
    /// with the parsed manifest; a document that is not TOML is an error.
    pub fn parse(rendered: &str) -> Result<(GramineManifest, Vec<String>), String> {
        let doc: toml_edit::DocumentMut = rendered.parse().map_err(|e| format!("not TOML: {e}"))?;
        let mut problems = Vec::new();
        let mut keys = Vec::new();
        leaf_keys("", doc.as_table(), &mut keys);
        for key in &keys {
            if !GRAMINE_KEYS.contains(&key.as_str()) {
                problems.push(format!("{key} is not a Gramine v1.8 manifest key"));
            }
        }
        for key in ["loader.argv", "sgx.remote_attestation"] {
            if !keys.iter().any(|k| k == key) {
                problems.push(format!("{key} is missing"));
            }
        }
        if toml_item(&doc, "sgx.remote_attestation").and_then(|i| i.as_str()) != Some("dcap") {
            problems.push("sgx.remote_attestation must be \"dcap\"".into());
        }
        if toml_item(&doc, "sgx.debug").and_then(|i| i.as_bool()) != Some(false) {
            problems.push("sgx.debug must be false: Coffer policies refuse debug enclaves".into());
        }
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
                let text = |key: &str| table.get(key).and_then(|v| v.as_str()).unwrap_or("");
                mounts.push(GramineMount {
                    kind: table
                        .get("type")
                        .and_then(|v| v.as_str())
                        .unwrap_or("chroot")
                        .to_string(),
                    uri: text("uri").trim_start_matches("file:").to_string(),
                    path: text("path").to_string(),
                });
            }
        }
        let manifest = GramineManifest {
            trusted: toml_strings(&doc, "sgx.trusted_files"),
            allowed: toml_strings(&doc, "sgx.allowed_files"),
            doc,
            keys,
            mounts,
        };
        match toml_strings(&manifest.doc, "libos.entrypoint")
            .first()
            .and_then(|e| manifest.host_path(e))
        {
            Some(host) if manifest.is_trusted(&host) => {}
            Some(host) => problems.push(format!("the entrypoint {host} is not a trusted file")),
            None => problems.push("libos.entrypoint is not under any fs.mounts path".into()),
        }
        Ok((manifest, problems))
    }

    /// The host path that `inside` maps to through the host mount whose path prefixes it.
    pub fn host_path(&self, inside: &str) -> Option<String> {
        self.mounts
            .iter()
            .filter(|m| {
                !m.uri.is_empty()
                    && (inside == m.path || inside.starts_with(&format!("{}/", m.path)))
            })
            .max_by_key(|m| m.path.len())
            .map(|m| format!("{}{}", m.uri, &inside[m.path.len()..]))
    }

    /// The host path of the entry point, if it is mounted.
    pub fn entrypoint_host(&self) -> Option<String> {
        toml_strings(&self.doc, "libos.entrypoint")
            .first()
            .and_then(|e| self.host_path(e))
    }

    /// Whether host path `path` is a trusted file (or under a trusted directory).
    pub fn is_trusted(&self, path: &str) -> bool {
        covered(&self.trusted, path)
    }

    /// Whether host path `path` is an allowed file (or under an allowed directory).
    pub fn is_allowed(&self, path: &str) -> bool {
        covered(&self.allowed, path)
    }

    /// `loader.argv` without its leading `coffer`; `None` (with a problem) when it does not
    /// start with `coffer`.
    pub fn coffer_args(&self, problems: &mut Vec<String>) -> Option<Vec<String>> {
        let argv = toml_strings(&self.doc, "loader.argv");
        if argv.first().map(String::as_str) != Some("coffer") {
            problems.push(format!("loader.argv must start with coffer: {argv:?}"));
            return None;
        }
        Some(argv[1..].to_vec())
    }
}

/// Whether `path` is one of the `file:` URIs of `list`, or under one of its directories.
fn covered(list: &[String], path: &str) -> bool {
    list.iter().any(|entry| {
        let entry = entry.trim_start_matches("file:");
        entry == path || (entry.ends_with('/') && format!("{path}/").starts_with(entry))
    })
}

/// Every key path of Occlum.json that Occlum v0.31 reads: the serde structs
/// `OcclumConfiguration` and friends of occlum/occlum tools/gen_internal_conf/src/main.rs as of
/// the v0.31 line (read at commit 012eb4edf942a27e20d1c44a4a81cd59385ceebb)
/// (`resource_limits`, `process`, `metadata`, `feature`, `mount`), with `env.default` /
/// `env.untrusted` as in its etc/template/Occlum.json. `[]` stands for any array element.
pub const OCCLUM_KEYS: &[&str] = &[
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
pub const OCCLUM_MOUNT_KEYS: &[&str] = &[
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
pub const OCCLUM_REQUIRED: &[&str] = &[
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
pub fn is_occlum_size(value: &serde_json::Value) -> bool {
    value.as_str().is_some_and(|s| {
        let digits = s.trim_end_matches(['K', 'M', 'G', 'B']);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && ["KB", "MB", "GB"].iter().any(|unit| s.ends_with(unit))
    })
}

/// Dotted key paths (`[]` for array elements) of every leaf of `value`, with the leaf.
pub fn json_leaf_keys(
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

/// Mount keys (layers included) Occlum v0.31 does not read.
pub fn occlum_mount_problems(mount: &serde_json::Value, problems: &mut Vec<String>) {
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
pub fn occlum_problems(text: &str) -> (Vec<String>, Vec<(String, String)>) {
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

/// The value of flag `name` in `args` (`--name=value` or `--name value`).
pub fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{name}="))
            .map(str::to_string)
            .or_else(|| (a == name).then(|| args.get(i + 1).cloned()).flatten())
    })
}

/// The arguments of the `occlum run /bin/coffer …` line of a README, continuation lines joined.
pub fn occlum_run_args(readme: &str) -> Vec<String> {
    let joined = readme.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.trim_start().starts_with("occlum run /bin/coffer"))
        .expect("the README shows `occlum run /bin/coffer …`");
    line.split_whitespace()
        .skip(3)
        .map(str::to_string)
        .collect()
}

/// Flags `coffer <path> --help` lists: the names on its option lines (indented at most six
/// spaces, as clap prints them; flags named in help prose belong to other programs or repeat).
pub fn help_flags(path: &[&str]) -> BTreeSet<String> {
    let mut args = path.to_vec();
    args.push("--help");
    let out = coffer(&args);
    assert!(out.status.success(), "coffer {args:?} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| {
            let trimmed = line.trim_start();
            // `-x` or `--name`, not an example command line's `-- APP ARGS`.
            let option = trimmed.starts_with('-') && !trimmed.starts_with("-- ");
            option && line.len() - trimmed.len() <= 6
        })
        .flat_map(|line| {
            line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                .filter(|w| w.starts_with("--") && w.len() > 2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The objects of one manifest as the real kubectl decodes them, offline (`kubectl create
/// --dry-run=client` needs an API server for discovery; `label --local` does not). `None` when
/// kubectl is not installed.
pub fn kubectl_objects(root: &Path, file: &Path) -> Option<Result<Vec<serde_json::Value>, String>> {
    let out = match Command::new("kubectl")
        .args(["label", "--local", "-o", "json", "-f"])
        .arg(root.join(file))
        .arg("coffer.example/docs-check=1")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => panic!("running kubectl: {e}"),
    };
    if !out.status.success() {
        return Some(Err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    let objects = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<serde_json::Value>()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("kubectl printed something that is not JSON: {e}"));
    Some(objects)
}
