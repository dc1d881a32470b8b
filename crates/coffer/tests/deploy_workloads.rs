//! The workload examples under deploy/workloads keep the promises docs/workloads.md makes about
//! them: every `coffer run` they start uses flags the real binary lists, plaintext goes only to
//! memory the TEE owns (a memory emptyDir, a Gramine tmpfs named in COFFER_RUN_PRIVATE_DIRS,
//! an Occlum ramfs), the places values are found at are the Secret they come from, the grants
//! mean what the guide says in a real keyd, and the sealed values are bound to the Secret they
//! sit in. Each file is read the way its consumer reads it (kubectl, Gramine v1.8 and Occlum
//! v0.31 keys, keyd's configuration parser, coffer-sealed), and each check is shown to catch
//! the mistake it looks for.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use coffer_keyd_client::KeydClient;
use coffer_sealed::bundle::KeyBundle;
use coffer_sealed::{Binding, Location, Scope, SealedValue};
use common::deploy::{
    arg_value, help_flags, kubectl_objects, occlum_problems, occlum_run_args, read, render_gramine,
    repo_root, toml_item, toml_strings, GramineManifest,
};
use common::keyd::{client_options, create_keyd_data, free_addr, sim_signer, KeydProcess};
use serde_json::Value;

const WORKLOADS: &str = "deploy/workloads";

/// The service account's namespace file, `coffer run`'s default `--namespace-file`.
const NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The objects of a manifest of deploy/workloads, as the real kubectl decodes them.
fn objects(file: &str) -> Vec<Value> {
    match kubectl_objects(&repo_root(), &Path::new(WORKLOADS).join(file)) {
        None => panic!("these checks read the manifests with kubectl, which is not installed"),
        Some(Err(e)) => panic!("{WORKLOADS}/{file}: kubectl cannot read it: {e}"),
        Some(Ok(objects)) => objects,
    }
}

/// The pod spec of a Pod or of a workload's template.
fn pod_spec(object: &Value) -> Option<&Value> {
    match object["kind"].as_str()? {
        "Pod" => Some(&object["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&object["spec"]["template"]["spec"])
        }
        _ => None,
    }
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

/// A `coffer run` command line: its flags (before `--`) and the app (after).
struct RunLine {
    flags: Vec<String>,
    app: Vec<String>,
}

impl RunLine {
    /// `words` from `run` on; `None` if they are not `run …`.
    fn parse(words: &[String]) -> Option<RunLine> {
        if words.first().map(String::as_str) != Some("run") {
            return None;
        }
        let rest = &words[1..];
        let split = rest.iter().position(|w| w == "--").unwrap_or(rest.len());
        Some(RunLine {
            flags: rest[..split].to_vec(),
            app: rest.get(split + 1..).unwrap_or_default().to_vec(),
        })
    }

    fn value(&self, name: &str) -> Option<String> {
        arg_value(&self.flags, name)
    }

    fn values(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, word) in self.flags.iter().enumerate() {
            if let Some(v) = word.strip_prefix(&format!("{name}=")) {
                out.push(v.to_string());
            } else if word == name {
                out.extend(self.flags.get(i + 1).cloned());
            }
        }
        out
    }

    fn has(&self, name: &str) -> bool {
        self.flags
            .iter()
            .any(|w| w == name || w.starts_with(&format!("{name}=")))
    }

    /// Flags `coffer run --help` does not list; a missing app.
    fn problems(&self, run_flags: &BTreeSet<String>) -> Vec<String> {
        let mut problems = Vec::new();
        for word in &self.flags {
            if let Some(flag) = word.strip_prefix("--") {
                let name = format!("--{}", flag.split('=').next().unwrap_or(""));
                if !run_flags.contains(&name) {
                    problems.push(format!("`coffer run` has no flag {name}"));
                }
            }
        }
        if self.app.is_empty() {
            problems.push("no app after `--`".into());
        }
        problems
    }

    /// The `--files` entries as (Secret name if given, directory).
    fn files(&self) -> Vec<(Option<String>, String)> {
        self.values("--files")
            .into_iter()
            .map(|v| match v.split_once('=') {
                Some((secret, dir)) => (Some(secret.to_string()), dir.to_string()),
                None => (None, v),
            })
            .collect()
    }

    /// The `--env-source` entries as (variable, Secret, key).
    fn env_sources(&self) -> Vec<(String, String, String)> {
        self.values("--env-source")
            .into_iter()
            .filter_map(|v| {
                let (var, place) = v.split_once('=')?;
                let (secret, key) = place.split_once('/')?;
                Some((var.to_string(), secret.to_string(), key.to_string()))
            })
            .collect()
    }
}

fn is_under(path: &str, dir: &str) -> bool {
    path == dir || path.starts_with(&format!("{}/", dir.trim_end_matches('/')))
}

/// What is wrong with the `coffer run` container of one pod spec (`what` names it).
fn pod_problems(what: &str, spec: &Value, run_flags: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).copied();
    let mut found = false;
    for c in spec["containers"].as_array().into_iter().flatten() {
        let words: Vec<String> = strings(&c["command"])
            .into_iter()
            .chain(strings(&c["args"]))
            .collect();
        let Some(at) = words.iter().position(|w| w.ends_with("/coffer")) else {
            continue;
        };
        let Some(run) = RunLine::parse(&words[at + 1..]) else {
            continue;
        };
        found = true;
        let at = format!("{what}, container {}", c["name"].as_str().unwrap_or("?"));
        problems.extend(
            run.problems(run_flags)
                .into_iter()
                .map(|p| format!("{at}: {p}")),
        );
        let env: Vec<&Value> = c["env"].as_array().into_iter().flatten().collect();
        let env_var = |name: &str| env.iter().find(|e| e["name"] == name).copied();
        // The volume mounted at exactly `path`, or (for a file) at a directory above it.
        let mount_of = |path: &str| -> Option<&Value> {
            c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| is_under(path, m["mountPath"].as_str().unwrap_or("\0")))
                .max_by_key(|m| m["mountPath"].as_str().unwrap_or("").len())
                .and_then(|m| volume(m["name"].as_str().unwrap_or("")))
        };

        match run.value("--keyd") {
            None => problems.push(format!("{at}: no --keyd")),
            Some(keyd) => {
                if let Some(var) = keyd.strip_prefix("$(").and_then(|v| v.strip_suffix(')')) {
                    if env_var(var).is_none() {
                        problems.push(format!("{at}: --keyd={keyd} names no env of the container"));
                    }
                }
            }
        }
        match run.value("--keyd-policy") {
            None => problems.push(format!("{at}: no --keyd-policy")),
            Some(policy) => match mount_of(&policy) {
                Some(v) if v["configMap"].is_object() => {}
                _ => problems.push(format!(
                    "{at}: --keyd-policy {policy} is not in a mounted ConfigMap"
                )),
            },
        }
        let out = run.value("--out");
        match &out {
            Some(out) => match c["volumeMounts"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| m["mountPath"] == out.as_str())
                .and_then(|m| volume(m["name"].as_str().unwrap_or("")))
            {
                Some(v) if v["emptyDir"]["medium"] == "Memory" => {}
                _ => problems.push(format!(
                    "{at}: --out {out} is not an emptyDir with medium: Memory (a tmpfs)"
                )),
            },
            None if run.has("--files") => {
                problems.push(format!("{at}: --files without --out"));
            }
            None => {}
        }
        if run.has("--allow-unprotected-out") {
            problems.push(format!("{at}: --allow-unprotected-out in an example"));
        }
        for (secret, dir) in run.files() {
            match mount_of(&dir) {
                Some(v) if v["secret"].is_object() => {
                    let name = v["secret"]["secretName"].as_str().unwrap_or("");
                    if secret.as_deref().is_some_and(|s| s != name) {
                        problems.push(format!(
                            "{at}: --files {}={dir}, but the volume there is Secret {name}",
                            secret.unwrap()
                        ));
                    }
                }
                _ => problems.push(format!(
                    "{at}: --files {dir} is not a mounted Secret volume"
                )),
            }
        }
        let namespace_env = env_var("POD_NAMESPACE")
            .is_some_and(|e| e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace");
        if !namespace_env && !run.has("--namespace") {
            problems.push(format!(
                "{at}: no POD_NAMESPACE from the Downward API (fieldRef metadata.namespace)"
            ));
        }
        let sources = run.env_sources();
        if !sources.is_empty() && !run.has("--env") {
            problems.push(format!("{at}: --env-source without --env"));
        }
        for (var, secret, key) in sources {
            let reference = env_var(&var).map(|e| &e["valueFrom"]["secretKeyRef"]);
            if reference.is_none_or(|r| r["name"] != secret.as_str() || r["key"] != key.as_str()) {
                problems.push(format!(
                    "{at}: --env-source {var}={secret}/{key}, but {var} is not secretKeyRef {secret}/{key}"
                ));
            }
        }
    }
    if !found {
        problems.push(format!("{what}: no container runs `coffer run`"));
    }
    problems
}

/// The `coffer run` line of the first container of `spec` that has one.
fn run_line(spec: &Value) -> RunLine {
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|c| {
            let words: Vec<String> = strings(&c["command"])
                .into_iter()
                .chain(strings(&c["args"]))
                .collect();
            let at = words.iter().position(|w| w.ends_with("/coffer"))?;
            RunLine::parse(&words[at + 1..])
        })
        .expect("a coffer run container")
}

/// The one pod spec of `file`, with its object.
fn only_pod(file: &str) -> (Value, Value) {
    let objects = objects(file);
    let object = objects
        .into_iter()
        .find(|o| pod_spec(o).is_some())
        .unwrap_or_else(|| panic!("{file} has no pod"));
    let spec = pod_spec(&object).unwrap().clone();
    (object, spec)
}

#[test]
fn pods_run_coffer_run_with_real_flags_and_memory_out() {
    let run_flags = help_flags(&["run"]);
    let mut problems = Vec::new();
    for file in ["pod.yaml", "deployment.yaml", "cvm/pod.yaml"] {
        let (object, spec) = only_pod(file);
        problems.extend(pod_problems(file, &spec, &run_flags));
        let run = run_line(&spec);
        if object["kind"] == "Deployment"
            && run.value("--on-change").as_deref() != Some("signal:HUP")
        {
            problems.push(format!(
                "{file}: the Deployment does not follow changes with --on-change signal:HUP"
            ));
        }
    }
    // The confidential-VM pod asks for a TEE and presents that TEE's evidence.
    let (_, spec) = only_pod("cvm/pod.yaml");
    let platform = run_line(&spec).value("--platform");
    match (spec["runtimeClassName"].as_str(), platform.as_deref()) {
        (Some("kata-qemu-tdx"), Some("tdx")) | (Some("kata-qemu-snp"), Some("snp")) => {}
        other => problems.push(format!(
            "cvm/pod.yaml: runtimeClassName and --platform do not match a TEE: {other:?}"
        )),
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn pod_checks_catch_each_mistake() {
    let run_flags = help_flags(&["run"]);
    let (_, good) = only_pod("pod.yaml");
    assert!(pod_problems("pod", &good, &run_flags).is_empty());
    let text = serde_json::to_string(&good).unwrap();
    let cases = [
        ("\"medium\":\"Memory\"", "\"medium\":\"\"", "medium: Memory"),
        (
            "\"--env\"",
            "\"--env-everything\"",
            "no flag --env-everything",
        ),
        (
            "\"--out=/run/coffer\"",
            "\"--out=/var/cache/coffer\"",
            "medium: Memory",
        ),
        (
            "\"--files=db=/var/run/secrets/db\"",
            "\"--files=other=/var/run/secrets/db\"",
            "Secret db",
        ),
        (
            "\"--files=db=/var/run/secrets/db\"",
            "\"--files=db=/etc/coffer-run\"",
            "not a mounted Secret",
        ),
        (
            "\"--env-source=DB_PASSWORD=db/password\"",
            "\"--env-source=DB_PASSWORD=db/username\"",
            "not secretKeyRef",
        ),
        (
            "\"metadata.namespace\"",
            "\"metadata.name\"",
            "POD_NAMESPACE",
        ),
        (
            "\"--keyd-policy=/etc/coffer-run/keyd-policy.yaml\"",
            "\"--keyd-policy=/etc/other.yaml\"",
            "ConfigMap",
        ),
        (
            "\"--keyd=$(COFFER_KEYD)\"",
            "\"--keyd=$(KEYD)\"",
            "names no env",
        ),
        ("\"--out=/run/coffer\",", "", "--files without --out"),
        (
            "\"--out=/run/coffer\"",
            "\"--out=/run/coffer\",\"--allow-unprotected-out\"",
            "allow-unprotected",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(text.contains(from), "{from}");
        let bad: Value = serde_json::from_str(&text.replacen(from, to, 1)).unwrap();
        let problems = pod_problems("pod", &bad, &run_flags).join("\n");
        assert!(
            problems.contains(expected),
            "{from} -> {to}: expected {expected:?} in:\n{problems}"
        );
    }
}

/// The sealed Secret as `kubectl coffer seal` writes it: annotations, and values that parse as
/// `coffer.v1.` values of the annotated keyring and keys, bound to exactly this Secret.
#[test]
fn sealed_secret_values_are_bound_to_their_secret() {
    let objects = objects("secret-sealed.yaml");
    assert_eq!(
        objects.len(),
        1,
        "one Secret per file, as kubectl coffer seal writes it"
    );
    let secret = &objects[0];
    assert_eq!(secret["kind"], "Secret");
    let namespace = secret["metadata"]["namespace"].as_str().unwrap();
    let name = secret["metadata"]["name"].as_str().unwrap();
    let annotations = &secret["metadata"]["annotations"];
    let keyring = annotations["coffer.dev/keyring"].as_str().unwrap();
    let key_ids: Vec<&str> = annotations["coffer.dev/sealing-key"]
        .as_str()
        .unwrap()
        .split(',')
        .collect();
    let scope = Scope::from_name(annotations["coffer.dev/scope"].as_str().unwrap()).unwrap();
    let values = secret["stringData"]
        .as_object()
        .expect("sealed values in stringData");
    assert!(values.len() >= 2, "{values:?}");
    for (key, text) in values {
        let value = SealedValue::parse(text.as_str().unwrap())
            .unwrap_or_else(|e| panic!("{key}: not a coffer.v1 value: {e}"));
        assert_eq!(value.keyring(), keyring, "{key}");
        assert!(
            key_ids.contains(&value.key_id()),
            "{key}: {}",
            value.key_id()
        );
        assert_eq!(value.binding().scope(), scope, "{key}");
        let here = common::keyd::location(namespace, name, key);
        value
            .binding()
            .admits(&here)
            .unwrap_or_else(|e| panic!("{key}: bound elsewhere: {}", e.0));
        // The check can fail: the same value under another key or Secret is refused.
        let elsewhere = common::keyd::location(namespace, name, "other");
        assert!(value.binding().admits(&elsewhere).is_err(), "{key}");
    }
    // Every place the pods take a value from is a key of this Secret.
    for file in ["pod.yaml", "deployment.yaml", "cvm/pod.yaml"] {
        let (object, spec) = only_pod(file);
        assert_eq!(object["metadata"]["namespace"], namespace, "{file}");
        for c in spec["containers"].as_array().unwrap() {
            for e in c["env"].as_array().into_iter().flatten() {
                let r = &e["valueFrom"]["secretKeyRef"];
                if r.is_object() {
                    assert_eq!(r["name"], name, "{file}");
                    assert!(
                        values.contains_key(r["key"].as_str().unwrap()),
                        "{file}: {r}"
                    );
                }
            }
        }
        for v in spec["volumes"].as_array().unwrap() {
            if v["secret"].is_object() {
                assert_eq!(v["secret"]["secretName"], name, "{file}");
            }
        }
    }
}

/// The Gramine manifest's own rules, on top of what every Coffer manifest must satisfy.
fn gramine_workload_problems(rendered: &str, run_flags: &BTreeSet<String>) -> Vec<String> {
    let (manifest, mut problems) = match GramineManifest::parse(rendered) {
        Ok(parsed) => parsed,
        Err(e) => return vec![e],
    };
    let Some(args) = manifest.coffer_args(&mut problems) else {
        return problems;
    };
    let Some(run) = RunLine::parse(&args) else {
        problems.push(format!("loader.argv must be `coffer run …`: {args:?}"));
        return problems;
    };
    problems.extend(run.problems(run_flags));
    if run.value("--platform").as_deref() != Some("sgx-gramine") {
        problems.push("--platform must be sgx-gramine".into());
    }
    // The kubelet's SIGTERM must reach coffer run, which forwards it to the app.
    if toml_item(&manifest.doc, "sys.enable_sigterm_injection").and_then(|i| i.as_bool())
        != Some(true)
    {
        problems.push(
            "sys.enable_sigterm_injection must be true: SIGTERM must reach coffer run".into(),
        );
    }
    // Gramine's tmpfs is per process: a running app never sees a new version.
    if run.value("--on-change").as_deref() != Some("restart") {
        problems.push("--on-change must be restart: the app's tmpfs is its own copy".into());
    }
    let tmpfs: BTreeSet<String> = manifest
        .mounts
        .iter()
        .filter(|m| m.kind == "tmpfs")
        .map(|m| m.path.clone())
        .collect();
    let declared: BTreeSet<String> =
        toml_strings(&manifest.doc, "loader.env.COFFER_RUN_PRIVATE_DIRS")
            .first()
            .map(|dirs| dirs.split(':').map(str::to_string).collect())
            .unwrap_or_default();
    if declared != tmpfs {
        problems.push(format!(
            "loader.env.COFFER_RUN_PRIVATE_DIRS {declared:?} must name exactly the tmpfs mounts {tmpfs:?}"
        ));
    }
    match run.value("--out") {
        Some(out) if tmpfs.iter().any(|t| is_under(&out, t)) => {}
        other => problems.push(format!("--out {other:?} is not a tmpfs mount")),
    }
    let passthrough = |var: &str| {
        toml_item(&manifest.doc, &format!("loader.env.{var}"))
            .and_then(|i| i.as_inline_table().and_then(|t| t.get("passthrough")))
            .and_then(|v| v.as_bool())
            == Some(true)
    };
    if !passthrough("POD_NAMESPACE") {
        problems.push("loader.env.POD_NAMESPACE must be { passthrough = true }".into());
    }
    for (var, _, _) in run.env_sources() {
        if !passthrough(&var) {
            problems.push(format!(
                "the sealed {var} must pass through: loader.env.{var}"
            ));
        }
    }
    let namespace_file = run
        .value("--namespace-file")
        .unwrap_or_else(|| NAMESPACE_FILE.to_string());
    let mut untrusted: Vec<String> = run.files().into_iter().map(|(_, dir)| dir).collect();
    untrusted.push(namespace_file);
    for inside in untrusted {
        match manifest.host_path(&inside) {
            Some(host) if manifest.is_allowed(&host) && !manifest.is_trusted(&host) => {}
            Some(host) => problems.push(format!(
                "{inside} (host {host}) must be an allowed file, not trusted: the kubelet rewrites it"
            )),
            None => problems.push(format!("{inside} is not mounted")),
        }
    }
    let mut measured = vec![run.value("--keyd-policy").unwrap_or_default()];
    measured.extend(run.app.first().cloned());
    for inside in measured {
        match manifest.host_path(&inside) {
            Some(host) if manifest.is_trusted(&host) => {}
            _ => problems.push(format!("{inside:?} must be a trusted (measured) file")),
        }
    }
    problems
}

#[test]
fn gramine_manifest_starts_the_app_with_out_in_enclave_tmpfs() {
    let template = read("deploy/workloads/gramine/app.manifest.template");
    let rendered = render_gramine(&template).unwrap();
    let problems = gramine_workload_problems(&rendered, &help_flags(&["run"]));
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(read("deploy/workloads/gramine/README.md").contains("Gramine v1.8"));
}

#[test]
fn gramine_checks_catch_each_mistake() {
    let run_flags = help_flags(&["run"]);
    let good = render_gramine(&read("deploy/workloads/gramine/app.manifest.template")).unwrap();
    let cases = [
        (
            "COFFER_RUN_PRIVATE_DIRS = \"/run/coffer\"",
            "COFFER_RUN_PRIVATE_DIRS = \"/run/coffer:/tmp\"",
            "exactly the tmpfs",
        ),
        (
            "{ type = \"tmpfs\", path = \"/run/coffer\" }",
            "{ uri = \"file:/run/coffer\", path = \"/run/coffer\" }",
            "tmpfs",
        ),
        (
            "\"--out\", \"/run/coffer\"",
            "\"--out\", \"/var/cache/coffer\"",
            "is not a tmpfs mount",
        ),
        (
            "loader.env.POD_NAMESPACE = { passthrough = true }",
            "",
            "POD_NAMESPACE",
        ),
        (
            "loader.env.DB_PASSWORD = { passthrough = true }",
            "",
            "DB_PASSWORD",
        ),
        (
            "\"--on-change\", \"restart\"",
            "\"--on-change\", \"signal:HUP\"",
            "restart",
        ),
        ("\"file:/app/server\",\n", "", "trusted"),
        (
            "\"file:/etc/coffer-run/keyd-policy.yaml\",\n",
            "",
            "trusted",
        ),
        ("\"file:/var/run/secrets/db/\",\n", "", "allowed file"),
        ("\"--env\",", "\"--envs\",", "no flag --envs"),
        (
            "sgx.remote_attestation = \"dcap\"",
            "sgx.remote_attestation = \"none\"",
            "dcap",
        ),
        ("sgx.debug = false", "sgx.debug = true", "debug"),
        (
            "sys.enable_sigterm_injection = true",
            "sys.enable_sigterm_injection = false",
            "SIGTERM",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(good.contains(from), "{from}");
        let problems =
            gramine_workload_problems(&good.replacen(from, to, 1), &run_flags).join("\n");
        assert!(
            problems.contains(expected),
            "{from} -> {to}: expected {expected:?} in:\n{problems}"
        );
    }
}

/// The workload's Occlum.json and `occlum run` line together.
fn occlum_workload_problems(
    config: &str,
    readme: &str,
    run_flags: &BTreeSet<String>,
) -> Vec<String> {
    let (mut problems, targets) = occlum_problems(config);
    let json: Value = match serde_json::from_str(config) {
        Ok(json) => json,
        Err(_) => return problems,
    };
    let args = occlum_run_args(readme);
    let Some(run) = RunLine::parse(&args) else {
        problems.push(format!(
            "`occlum run /bin/coffer` must run `coffer run …`: {args:?}"
        ));
        return problems;
    };
    problems.extend(run.problems(run_flags));
    if run.value("--platform").as_deref() != Some("sgx-occlum") {
        problems.push("--platform must be sgx-occlum".into());
    }
    let defaults: Vec<String> = strings(&json["env"]["default"]);
    let untrusted: Vec<String> = strings(&json["env"]["untrusted"]);
    let default = |var: &str| {
        defaults
            .iter()
            .find_map(|d| d.strip_prefix(&format!("{var}=")).map(str::to_string))
    };
    let of_type = |path: &str, kind: &str| {
        targets
            .iter()
            .filter(|(t, _)| is_under(path, t))
            .max_by_key(|(t, _)| t.len())
            .is_some_and(|(_, k)| k == kind)
    };
    match run.value("--out").or_else(|| default("COFFER_OUT")) {
        Some(out) if of_type(&out, "ramfs") => {}
        other => problems.push(format!(
            "--out {other:?} is not a ramfs mount (enclave memory)"
        )),
    }
    for measured in ["COFFER_OUT", "COFFER_KEYD_POLICY"] {
        if untrusted.iter().any(|u| u == measured) {
            problems.push(format!(
                "{measured} must not be in env.untrusted: the host would choose it"
            ));
        }
    }
    if run.value("--keyd-policy").is_none() && default("COFFER_KEYD_POLICY").is_none() {
        problems.push("keyd's policy is neither in the command line nor in env.default".into());
    }
    let mut passed: Vec<String> = run.env_sources().into_iter().map(|(v, _, _)| v).collect();
    passed.push("POD_NAMESPACE".into());
    for var in passed {
        if !untrusted.contains(&var) {
            problems.push(format!(
                "{var} must be in env.untrusted, or occlum run drops it"
            ));
        }
    }
    for (_, dir) in run.files() {
        if !of_type(&dir, "hostfs") {
            problems.push(format!(
                "--files {dir} is not a hostfs mount of the kubelet's volume"
            ));
        }
    }
    let entry_points = strings(&json["entry_points"]);
    if entry_points.is_empty() || entry_points.iter().any(|e| e != "/bin/coffer") {
        problems.push(format!(
            "entry_points {entry_points:?} must be only /bin/coffer"
        ));
    }
    problems
}

#[test]
fn occlum_config_starts_the_app_with_out_in_enclave_ramfs() {
    let problems = occlum_workload_problems(
        &read("deploy/workloads/occlum/Occlum.json"),
        &read("deploy/workloads/occlum/README.md"),
        &help_flags(&["run"]),
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(read("deploy/workloads/occlum/README.md").contains("Occlum v0.31"));
}

#[test]
fn occlum_checks_catch_each_mistake() {
    let run_flags = help_flags(&["run"]);
    let config = read("deploy/workloads/occlum/Occlum.json");
    let readme = read("deploy/workloads/occlum/README.md");
    let config_cases = [
        (
            "\"target\": \"/run/coffer\",\n            \"type\": \"ramfs\"",
            "\"target\": \"/run/coffer\",\n            \"type\": \"hostfs\"",
            "ramfs",
        ),
        (
            "\"COFFER_OUT=/run/coffer\"",
            "\"COFFER_OUT=/var/cache/coffer\"",
            "ramfs",
        ),
        ("\"POD_NAMESPACE\",", "", "POD_NAMESPACE"),
        (
            "\"DB_PASSWORD\"",
            "\"DB_PASSWORD\", \"COFFER_OUT\"",
            "must not be in env.untrusted",
        ),
        ("\"/bin/coffer\"\n", "\"/bin\"\n", "entry_points"),
        (
            "\"debuggable\": false",
            "\"debuggable\": true",
            "debuggable",
        ),
    ];
    for (from, to, expected) in config_cases {
        assert!(config.contains(from), "{from}");
        let problems =
            occlum_workload_problems(&config.replacen(from, to, 1), &readme, &run_flags).join("\n");
        assert!(problems.contains(expected), "{from} -> {to}: {problems}");
    }
    let readme_cases = [
        (
            "run --platform sgx-occlum",
            "run --platform sgx-gramine",
            "sgx-occlum",
        ),
        (
            "--files db=/var/run/secrets/db",
            "--files db=/run/coffer",
            "hostfs",
        ),
        (
            "--on-change signal:HUP",
            "--on-change signal:HUP --no-such-flag",
            "no flag --no-such-flag",
        ),
    ];
    for (from, to, expected) in readme_cases {
        assert!(readme.contains(from), "{from}");
        let problems =
            occlum_workload_problems(&config, &readme.replacen(from, to, 1), &run_flags).join("\n");
        assert!(problems.contains(expected), "{from} -> {to}: {problems}");
    }
}

/// Seals `plaintext` strictly for `at` to the primary key of keyd's `keyring` bundle.
async fn seal_for(client: &mut KeydClient, keyring: &str, at: &Location) -> String {
    let bundle = KeyBundle::from_json(&client.key_bundle(keyring).await.unwrap()).unwrap();
    let binding = Binding::new(Scope::Strict, at).unwrap();
    coffer_sealed::seal(
        keyring,
        &bundle.primary().unwrap(),
        &binding,
        b"example value",
    )
    .unwrap()
    .to_text()
}

/// keyd-grants.yaml is a configuration keyd starts with, and its grants allow and refuse what
/// its comments and docs/workloads.md say, through a real keyd's UnsealBatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_work_in_a_real_keyd_as_documented() {
    let grants = repo_root().join(WORKLOADS).join("keyd-grants.yaml");
    let config = coffer_keyd::KeydConfig::load(&grants).unwrap();
    let roles: BTreeSet<&str> = config.keyrings["apps"]
        .unseal
        .iter()
        .map(|g| g.role.as_str())
        .collect();
    assert_eq!(
        roles,
        BTreeSet::from(["app:shop-web", "app:shop-reports", "app:payments"])
    );

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["apps"]);
    let mut policy = String::from("version: 1\nallow_simulation: true\nroles:\n");
    for role in &roles {
        let state = dir.path().join(role.replace(':', "-"));
        policy.push_str(&format!(
            "  - name: \"{role}\"\n    sim: {{ signer: [\"{}\"] }}\n",
            sim_signer(&state)
        ));
    }
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let keyd = KeydProcess::start(&data, free_addr(), &policy_path, &grants, &[]);

    let loc = common::keyd::location;
    // (role, where the value is found, whether keyd unseals it there)
    let cases = [
        ("app:shop-web", loc("shop", "db", "password"), true),
        ("app:shop-web", loc("shop", "web-tls", "tls.key"), true),
        ("app:shop-web", loc("shop", "billing", "token"), false),
        ("app:shop-web", loc("payments", "db", "password"), false),
        ("app:shop-reports", loc("shop", "db", "password"), true),
        ("app:shop-reports", loc("shop", "db", "username"), false),
        ("app:payments", loc("payments-eu", "ledger", "key"), true),
        ("app:payments", loc("shop", "db", "password"), false),
    ];
    for role in &roles {
        let state = dir.path().join(role.replace(':', "-"));
        let mut client = KeydClient::connect_within(
            keyd.addr,
            client_options(&state, &keyd.signer()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        let mine: Vec<&(&str, Location, bool)> = cases.iter().filter(|c| c.0 == *role).collect();
        let mut sealed = Vec::new();
        for (_, at, _) in &mine {
            sealed.push(seal_for(&mut client, "apps", at).await);
        }
        let items: Vec<(&str, &Location)> = sealed
            .iter()
            .zip(&mine)
            .map(|(s, (_, at, _))| (s.as_str(), at))
            .collect();
        let results = client.unseal_batch("apps", &items).await.unwrap();
        for ((_, at, allowed), result) in mine.iter().zip(results) {
            match (allowed, result) {
                (true, Ok(plaintext)) => assert_eq!(&plaintext[..], b"example value"),
                (false, Err(refusal)) => {
                    assert_eq!(refusal.code, tonic::Code::PermissionDenied, "{role} {at:?}")
                }
                (allowed, result) => panic!(
                    "{role} at {at:?}: expected allowed={allowed}, got {:?}",
                    result.map(|_| "plaintext")
                ),
            }
        }
    }
}

/// A grant naming a role keyd's policy does not define stops keyd: the grants file is checked
/// against the policy, so the test above would see a mistyped role.
#[test]
fn a_grant_to_an_undefined_role_stops_keyd() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("keyd");
    create_keyd_data(&data, &["apps"]);
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "version: 1\nallow_simulation: true\nroles:\n  - name: \"app:shop-web\"\n    sim: { signer: [\"0000000000000000000000000000000000000000000000000000000000000000\"] }\n").unwrap();
    let out = common::run::output_within(
        std::process::Command::new(common::coffer_bin()).args([
            "keyd",
            "serve",
            "--platform",
            "sim",
            "--listen",
            &free_addr().to_string(),
            "--data-dir",
            data.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--config",
            repo_root()
                .join(WORKLOADS)
                .join("keyd-grants.yaml")
                .to_str()
                .unwrap(),
        ]),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("app:shop-reports"), "{stderr}");
}

/// docs/workloads.md links every file of deploy/workloads, so none is left unexplained.
#[test]
fn the_guide_links_every_example() {
    let guide = read("docs/workloads.md");
    let mut files = Vec::new();
    let root = repo_root().join(WORKLOADS);
    for dir in ["", "gramine", "occlum", "cvm"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                files.push(format!(
                    "{dir}{}{}",
                    if dir.is_empty() { "" } else { "/" },
                    path.file_name().unwrap().to_str().unwrap()
                ));
            }
        }
    }
    assert!(files.len() >= 10, "{files:?}");
    for file in files {
        let dir_link = format!("../deploy/workloads/{}/", file.split('/').next().unwrap());
        assert!(
            guide.contains(&format!("../deploy/workloads/{file}"))
                || (file.contains('/') && guide.contains(&dir_link)),
            "docs/workloads.md does not link deploy/workloads/{file}"
        );
    }
}

/// The namespace file default this test assumes is the one `coffer run` uses.
#[test]
fn the_default_namespace_file_is_the_service_accounts() {
    let out = common::coffer(&["run", "--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains(NAMESPACE_FILE));
}

/// docs/workloads.md's flag reference lists exactly the flags of `coffer run --help` (the
/// logging flags every command has are documented elsewhere).
#[test]
fn the_guide_lists_every_coffer_run_flag() {
    let guide = read("docs/workloads.md");
    let reference = &guide[guide
        .find("## 14. Flags")
        .expect("a flag reference section")..];
    let mut documented = BTreeSet::new();
    for row in reference.lines().filter(|l| l.starts_with("| `--")) {
        let cell = row.split(" | ").next().unwrap();
        for word in cell.split(['`', ' ', ',', '(', ')']) {
            if word.starts_with("--") && word.len() > 2 {
                documented.insert(word.to_string());
            }
        }
    }
    let common = ["--help", "--version", "--log-level", "--log-format"];
    let listed: BTreeSet<String> = help_flags(&["run"])
        .into_iter()
        .filter(|f| !common.contains(&f.as_str()))
        .collect();
    assert_eq!(documented, listed, "docs/workloads.md, 14. Flags");
}
