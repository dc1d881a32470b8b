//! The documentation matches the binary, and the deployment manifests are ones an operator can
//! apply.
//!
//! Every `coffer …` command written in README.md, docs/*.md and deploy/ (fenced code blocks,
//! inline code, and the `args:` of manifests and YAML snippets) must name a real subcommand and
//! use only flags that subcommand accepts, as the real binary's `--help` lists them. The one-machine
//! walk-throughs are then run as written, and the manifests under deploy/ are parsed with the
//! real `kubectl` and checked against the rules their comments promise.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::deploy::kubectl_objects;
use common::{coffer_bin, kubectl_coffer_bin};

/// Subcommands the docs mention as planned; they must not be checked against the binary.
const PLANNED: &[&str] = &[];

/// Fenced blocks whose lines are commands.
const SHELL_FENCES: &[&str] = &["sh", "bash", "shell", "console", "ini"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// README.md, docs/*.md and every Markdown file under deploy/, relative to the repository root.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md")];
    for dir in [
        "docs",
        "deploy",
        "deploy/gramine",
        "deploy/occlum",
        "deploy/keyd",
        "deploy/workloads",
        "deploy/workloads/gramine",
        "deploy/workloads/occlum",
        "deploy/workloads/cvm",
    ] {
        let Ok(entries) = fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| Path::new(dir).join(e.file_name()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// Kubernetes manifests under deploy/ (every `*.yaml` file).
fn manifest_files(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["deploy", "deploy/keyd"] {
        let mut found: Vec<PathBuf> = fs::read_dir(root.join(dir))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| Path::new(dir).join(e.file_name()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    files
}

/// One `coffer` command line found in the documentation.
#[derive(Debug, Clone)]
struct Invocation {
    /// `file:line` where it was written.
    place: String,
    /// The words after `coffer`.
    words: Vec<String>,
    /// Whether a word that is not a subcommand, where one is expected, is an error. Inline code
    /// also quotes messages (`coffer kms is already serving …`), so there it only means the
    /// span is not a command.
    strict: bool,
    /// Whether it is the `args:` list of a container, which may belong to another program.
    yaml_args: bool,
}

/// A fenced code block: its info string, first line number and lines.
struct Fence {
    lang: String,
    first_line: usize,
    lines: Vec<String>,
}

/// Splits Markdown into fenced blocks and the prose around them (fenced lines blanked, so line
/// numbers stay right).
fn split_markdown(text: &str) -> (Vec<Fence>, Vec<String>) {
    let mut fences = Vec::new();
    let mut prose = Vec::new();
    let mut open: Option<(String, Fence)> = None;
    for (i, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match open.take() {
            None if trimmed.starts_with("```") || trimmed.starts_with("~~~") => {
                let marker = trimmed[..3].to_string();
                let lang = trimmed[3..].trim().to_string();
                open = Some((
                    marker,
                    Fence {
                        lang,
                        first_line: i + 2,
                        lines: Vec::new(),
                    },
                ));
                prose.push(String::new());
            }
            None => prose.push(line.to_string()),
            Some((marker, fence)) if trimmed.starts_with(&marker) => {
                fences.push(fence);
                prose.push(String::new());
            }
            Some((marker, mut fence)) => {
                fence.lines.push(line.to_string());
                open = Some((marker, fence));
                prose.push(String::new());
            }
        }
    }
    (fences, prose)
}

/// Inline code spans of the prose, with the line each starts on. A span may continue on the
/// next line, as Markdown allows.
fn inline_spans(prose: &[String]) -> Vec<(usize, String)> {
    let mut spans = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in prose.iter().enumerate() {
        if line.is_empty() {
            current = None; // a span never crosses a paragraph break
            continue;
        }
        let mut rest = line.as_str();
        if let Some((_, span)) = current.as_mut() {
            span.push(' ');
        }
        while !rest.is_empty() {
            match (current.take(), rest.find('`')) {
                (Some((start, mut span)), Some(end)) => {
                    span.push_str(&rest[..end]);
                    spans.push((start, span));
                    rest = &rest[end + 1..];
                }
                (Some((start, mut span)), None) => {
                    span.push_str(rest);
                    current = Some((start, span));
                    rest = "";
                }
                (None, Some(open)) => {
                    current = Some((i + 1, String::new()));
                    rest = &rest[open + 1..];
                }
                (None, None) => rest = "",
            }
        }
    }
    spans
}

/// Shell-like words: whitespace-separated, quotes grouping, `#` starting a comment. Markdown
/// table escapes (`\|`) are undone.
fn shell_words(line: &str) -> Vec<String> {
    let line = line.replace("\\|", "|");
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => word.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None if c == '#' && !in_word => break,
            None => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Whether a word ends a command (pipes, lists, redirections, substitutions).
fn ends_command(word: &str) -> bool {
    matches!(word, "|" | "||" | "&&" | "&" | ";" | ")" | "\\")
        || word.starts_with('>')
        || word.starts_with('<')
        || word.starts_with("2>")
        || word.starts_with('$')
        || word.starts_with("<<")
}

/// The first word of a documented `kubectl coffer …` invocation: the rest is checked against
/// the `kubectl-coffer` binary instead of `coffer`.
const KUBECTL_PLUGIN: &str = "@kubectl-coffer";

/// The `coffer` (and `kubectl coffer`) invocations in one logical shell line. `vars` are shell variables that hold the
/// binary's path (`C=./target/release/coffer` then `$C …`).
fn invocations_in(line: &str, vars: &BTreeSet<String>) -> Vec<Vec<String>> {
    let words = shell_words(line);
    let mut found = Vec::new();
    let mut i = 0;
    while i < words.len() {
        let w = words[i].as_str();
        let is_binary = w == "coffer"
            || (w.ends_with("/coffer") && !w.contains("://"))
            || vars
                .iter()
                .any(|v| w == format!("${v}") || w == format!("${{{v}}}"));
        let plugin = is_binary && i > 0 && words[i - 1] == "kubectl";
        let start = if is_binary {
            Some(i + 1)
        } else if w == "cargo" && words.get(i + 1).is_some_and(|n| n == "run") {
            words[i..].iter().position(|x| x == "--").map(|p| i + p + 1)
        } else {
            None
        };
        if let Some(start) = start {
            // `kubectl coffer …` is checked against `kubectl-coffer`'s help.
            let mut args = if plugin {
                vec![KUBECTL_PLUGIN.to_string()]
            } else {
                Vec::new()
            };
            let mut j = start;
            while j < words.len() && !ends_command(&words[j]) {
                args.push(words[j].trim_matches(|c| c == '[' || c == ']').to_string());
                j += 1;
            }
            if args.len() > usize::from(plugin) {
                found.push(args);
            }
            i = j;
        } else {
            i += 1;
        }
    }
    found
}

/// `NAME=…/coffer` assignments in a shell block.
fn binary_vars(lines: &[String]) -> BTreeSet<String> {
    lines
        .iter()
        .filter_map(|l| {
            let (name, value) = l.trim().split_once('=')?;
            let ok = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && (value == "coffer" || value.ends_with("/coffer"));
            ok.then(|| name.to_string())
        })
        .collect()
}

/// The lines of a shell block joined at trailing backslashes, each with its first line number.
fn logical_lines(first_line: usize, lines: &[String]) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    let mut continuing = false;
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_end();
        let (body, continues) = match trimmed.strip_suffix('\\') {
            Some(body) => (body, true),
            None => (trimmed, false),
        };
        if continuing {
            let last = out.last_mut().unwrap();
            last.1.push(' ');
            last.1.push_str(body);
        } else {
            out.push((first_line + i, body.to_string()));
        }
        continuing = continues;
    }
    out
}

/// `args:` lists in YAML (manifests and snippets): each list with the line of its `args:`.
fn yaml_args(first_line: usize, lines: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        let indent = line.len() - line.trim_start().len();
        if line.trim() != "args:" {
            i += 1;
            continue;
        }
        let mut args = Vec::new();
        let mut j = i + 1;
        while j < lines.len() {
            let item = lines[j].trim();
            let item_indent = lines[j].len() - lines[j].trim_start().len();
            if item.is_empty() || item.starts_with('#') {
                j += 1;
                continue;
            }
            if item_indent < indent || !item.starts_with("- ") {
                break;
            }
            let value = item[2..].split(" #").next().unwrap().trim();
            args.push(value.trim_matches(|c| c == '"' || c == '\'').to_string());
            j += 1;
        }
        out.push((first_line + i, args));
        i = j;
    }
    out
}

/// Every `coffer` command the documentation and the manifests contain.
fn documented_invocations(root: &Path) -> Vec<Invocation> {
    let mut all = Vec::new();
    for file in markdown_files(root) {
        let text = fs::read_to_string(root.join(&file)).unwrap();
        let (fences, prose) = split_markdown(&text);
        for fence in &fences {
            if fence.lang == "yaml" || fence.lang == "yml" {
                for (line, args) in yaml_args(fence.first_line, &fence.lines) {
                    all.push(Invocation {
                        place: format!("{}:{line}", file.display()),
                        words: args,
                        strict: true,
                        yaml_args: true,
                    });
                }
                continue;
            }
            if !SHELL_FENCES.contains(&fence.lang.as_str()) {
                continue; // sample output and messages, not commands
            }
            let vars = binary_vars(&fence.lines);
            for (line, text) in logical_lines(fence.first_line, &fence.lines) {
                for words in invocations_in(&text, &vars) {
                    all.push(Invocation {
                        place: format!("{}:{line}", file.display()),
                        words,
                        strict: true,
                        yaml_args: false,
                    });
                }
            }
        }
        for (line, span) in inline_spans(&prose) {
            for words in invocations_in(&span, &BTreeSet::new()) {
                all.push(Invocation {
                    place: format!("{}:{line}", file.display()),
                    words,
                    strict: false,
                    yaml_args: false,
                });
            }
        }
    }
    for file in manifest_files(root) {
        let text = fs::read_to_string(root.join(&file)).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        for (line, args) in yaml_args(1, &lines) {
            all.push(Invocation {
                place: format!("{}:{line}", file.display()),
                words: args,
                strict: true,
                yaml_args: true,
            });
        }
    }
    let gramine = Path::new("deploy/gramine/coffer.manifest.template");
    if let Ok(text) = fs::read_to_string(root.join(gramine)) {
        let start = text
            .find("loader.argv = [")
            .expect("the Gramine manifest sets loader.argv");
        let line = text[..start].lines().count() + 1;
        let list = &text[start..start + text[start..].find(']').unwrap()];
        let words: Vec<String> = list
            .split('"')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        assert_eq!(words.first().map(String::as_str), Some("coffer"), "{list}");
        all.push(Invocation {
            place: format!("{}:{line}", gramine.display()),
            words: words[1..].to_vec(),
            strict: true,
            yaml_args: false,
        });
    }
    // YAML `args:` lists that do not start with a coffer command belong to other programs.
    let top = help_of(&mut HashMap::new(), &[]).subcommands;
    all.retain(|inv| !inv.yaml_args || inv.words.first().is_some_and(|w| top.contains(w)));
    all
}

/// What `coffer <path> --help` says: subcommands and accepted flags.
#[derive(Clone, Default)]
struct Help {
    subcommands: BTreeSet<String>,
    flags: BTreeSet<String>,
}

fn parse_help(text: &str) -> Help {
    let mut help = Help::default();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = line;
            continue;
        }
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if section == "Commands:" && indent == 2 {
            if let Some(name) = trimmed.split_whitespace().next() {
                help.subcommands.insert(name.to_string());
            }
        } else if trimmed.starts_with('-') && indent <= 6 {
            for word in trimmed.split([' ', ',']) {
                if let Some(name) = word.strip_prefix("--") {
                    if !name.is_empty() {
                        help.flags.insert(format!("--{name}"));
                    }
                }
            }
        }
    }
    help
}

fn help_of(cache: &mut HashMap<Vec<String>, Help>, path: &[String]) -> Help {
    cache
        .entry(path.to_vec())
        .or_insert_with(|| {
            let (program, rest) = match path.split_first() {
                Some((first, rest)) if first == KUBECTL_PLUGIN => (kubectl_coffer_bin(), rest),
                _ => (PathBuf::from(coffer_bin()), path),
            };
            let mut args: Vec<&str> = rest.iter().map(String::as_str).collect();
            args.push("--help");
            let out = Command::new(&program)
                .args(&args)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{} {} failed: {}",
                program.display(),
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
            parse_help(&String::from_utf8_lossy(&out.stdout))
        })
        .clone()
}

fn is_placeholder(word: &str) -> bool {
    word.starts_with('<')
        || word.starts_with('…')
        || word.starts_with("...")
        || word.is_empty()
        || word == "-"
}

/// Checks one command against the binary; appends what is wrong to `problems`.
fn check(
    cache: &mut HashMap<Vec<String>, Help>,
    inv: &Invocation,
    words: &[String],
    problems: &mut Vec<String>,
) {
    let plugin = words.first().is_some_and(|w| w == KUBECTL_PLUGIN);
    let program = if plugin { "kubectl coffer" } else { "coffer" };
    let shown_words = if plugin {
        &inv.words[1..]
    } else {
        &inv.words[..]
    };
    let shown = format!("`{program} {}`", shown_words.join(" "));
    let mut path: Vec<String> = Vec::new();
    let mut i = 0;
    if plugin {
        path.push(KUBECTL_PLUGIN.to_string());
        i = 1;
    }
    let mut help = help_of(cache, &path);
    // The subcommand path as a user types it, for messages.
    let typed = |path: &[String]| {
        path.iter()
            .filter(|w| *w != KUBECTL_PLUGIN)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ")
    };
    while i < words.len() && !help.subcommands.is_empty() {
        let word = &words[i];
        if help.subcommands.contains(word) {
            path.push(word.clone());
            help = help_of(cache, &path);
            i += 1;
            continue;
        }
        let alternatives: Vec<&str> = word.split('|').collect();
        if alternatives.len() > 1 && alternatives.iter().all(|a| help.subcommands.contains(*a)) {
            for alt in alternatives {
                let mut expanded = words.to_vec();
                expanded[i] = alt.to_string();
                check(cache, inv, &expanded, problems);
            }
            return;
        }
        if path.is_empty() && !plugin && PLANNED.contains(&word.as_str()) {
            return;
        }
        if !word.starts_with('-') && !is_placeholder(word) {
            if !inv.strict {
                return;
            }
            problems.push(format!(
                "{}: {shown}: `{word}` is not a subcommand of `{program} {}` (it has: {})",
                inv.place,
                typed(&path),
                help.subcommands
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            return;
        }
        break;
    }
    for word in &words[i..] {
        if word == "--" {
            break;
        }
        let Some(flag) = word.strip_prefix("--") else {
            continue;
        };
        let name = format!("--{}", flag.split('=').next().unwrap());
        if name == "--" || name.ends_with('*') {
            continue;
        }
        if !help.flags.contains(&name) {
            problems.push(format!(
                "{}: {shown}: `{name}` is not a flag of `{program} {}` (`{program} {} --help` lists: {})",
                inv.place,
                typed(&path),
                typed(&path),
                help.flags.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
        }
    }
}

#[test]
fn every_documented_command_and_flag_exists() {
    let root = repo_root();
    let invocations = documented_invocations(&root);
    // The extraction must find the walk-throughs, or this test would pass on nothing.
    for (file, at_least) in [
        ("README.md", 4),
        ("docs/keyd.md", 20),
        ("docs/kms-plugin.md", 10),
        ("docs/operations.md", 15),
        ("docs/tee-platforms.md", 5),
        ("docs/kubectl-coffer.md", 25),
        ("docs/workloads.md", 8),
        ("deploy/workloads/occlum/README.md", 1),
        ("deploy/static-pod.yaml", 1),
        ("deploy/keyd/keyd.yaml", 1),
        ("deploy/keyd/keyd-ha.yaml", 1),
        ("docs/keyd-ha.md", 5),
        ("deploy/static-pod-keyd.yaml", 1),
        ("deploy/gramine/coffer.manifest.template", 1),
    ] {
        let n = invocations
            .iter()
            .filter(|i| i.place.starts_with(&format!("{file}:")))
            .count();
        assert!(
            n >= at_least,
            "found only {n} coffer commands in {file}; the extraction is broken"
        );
    }
    let mut cache = HashMap::new();
    let mut problems = Vec::new();
    for inv in &invocations {
        check(&mut cache, inv, &inv.words, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "the documentation uses commands or flags the binary does not accept:\n{}",
        problems.join("\n")
    );
}

/// kms-plugin.md's reference table lists exactly the flags of `coffer kms serve --help`.
#[test]
fn kms_serve_reference_lists_every_flag() {
    let problems = reference_problems("serve", &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// kms-plugin.md's bridge section names every flag of `coffer kms bridge --help`: those it
/// shares with `kms serve` in its prose, its own in its table.
#[test]
fn kms_bridge_reference_lists_every_flag() {
    let problems = reference_problems("bridge", &["--log-level", "--log-format"]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// What is wrong with the `coffer kms <command>` reference section: flags it documents that the
/// command does not take, and flags the command takes that it does not document (`global`
/// ones may be documented elsewhere).
fn reference_problems(command: &str, global: &[&str]) -> Vec<String> {
    let root = repo_root();
    let text = fs::read_to_string(root.join("docs/kms-plugin.md")).unwrap();
    let heading = format!("## `coffer kms {command}` reference");
    let start = text
        .find(&heading)
        .unwrap_or_else(|| panic!("docs/kms-plugin.md has a {heading:?} section"));
    let section = &text[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let mut documented = BTreeSet::new();
    for row in section.lines().filter(|l| l.starts_with("| `--")) {
        let cell = row.split(" | ").next().unwrap();
        for word in cell.split(['`', ' ', '/', '(', ')']) {
            if word.starts_with("--") && word.len() > 2 {
                documented.insert(word.to_string());
            }
        }
    }
    // Flags named in the prose count too (the bridge's shared flags are listed there).
    for line in section.lines().filter(|l| !l.starts_with('|')) {
        for word in line.split(['`', ' ', ',', '.', ':', '(', ')']) {
            if word.starts_with("--") && word.len() > 2 {
                documented.insert(word.to_string());
            }
        }
    }
    let help = help_of(&mut HashMap::new(), &["kms".into(), command.into()]);
    let mut problems = Vec::new();
    for flag in &documented {
        if !help.flags.contains(flag) {
            problems.push(format!(
                "docs/kms-plugin.md documents {flag}, which `coffer kms {command}` does not accept"
            ));
        }
    }
    for flag in &help.flags {
        if !documented.contains(flag)
            && flag != "--help"
            && flag != "--version"
            && !global.contains(&flag.as_str())
        {
            problems.push(format!(
                "`coffer kms {command} --help` lists {flag}, which the reference section in \
                 docs/kms-plugin.md does not document"
            ));
        }
    }
    problems
}

/// Relative links in the Markdown files point at files inside the repository.
#[test]
fn links_stay_inside_the_repository() {
    let root = repo_root();
    let mut problems = Vec::new();
    for file in markdown_files(&root) {
        let text = fs::read_to_string(root.join(&file)).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(at) = rest.find("](") {
                rest = &rest[at + 2..];
                let Some(end) = rest.find(')') else { break };
                let target = &rest[..end];
                rest = &rest[end..];
                if target.contains("://")
                    || target.starts_with('#')
                    || target.starts_with("mailto:")
                {
                    continue;
                }
                let path = target.split('#').next().unwrap();
                let resolved = root.join(file.parent().unwrap()).join(path);
                let inside = resolved
                    .canonicalize()
                    .map(|p| p.starts_with(&root))
                    .unwrap_or(false);
                if !inside {
                    problems.push(format!(
                        "{}:{}: link to {target} leaves the repository or does not exist",
                        file.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Capabilities the Pod Security `baseline` level lets a container add.
const BASELINE_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The value of `--name` in `args` (`--name=value` or `--name value`).
fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter().enumerate().find_map(|(i, a)| {
        if let Some(v) = a.strip_prefix(&format!("{name}=")) {
            Some(v.to_string())
        } else if a == name {
            args.get(i + 1).cloned()
        } else {
            None
        }
    })
}

/// Flags whose values start with `/` but are not paths in the container.
const NOT_FILE_FLAGS: [&str; 1] = ["--etcd-prefix"];

/// What is wrong with one pod spec (`what` names it in messages); `claims` are the volumes a
/// StatefulSet's `volumeClaimTemplates` add.
fn check_pod_spec(
    what: &str,
    namespace: &str,
    spec: &serde_json::Value,
    claims: &serde_json::Value,
) -> Vec<String> {
    let mut problems = Vec::new();
    let host_network = spec["hostNetwork"].as_bool().unwrap_or(false);
    let volumes: BTreeSet<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(claims.as_array().into_iter().flatten())
        .filter_map(|v| v["name"].as_str().or(v["metadata"]["name"].as_str()))
        .collect();
    let pod_user = spec["securityContext"]["runAsUser"].as_i64();
    let containers = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["initContainers"].as_array().into_iter().flatten());
    for c in containers {
        let name = c["name"].as_str().unwrap_or("?");
        let at = format!("{what}, container {name}");
        let user = c["securityContext"]["runAsUser"].as_i64().or(pod_user);
        let root = user.is_none_or(|u| u == 0);

        for cap in strings(&c["securityContext"]["capabilities"]["add"]) {
            let cap = cap.trim_start_matches("CAP_").to_string();
            if !root {
                problems.push(format!(
                    "{at}: adds {cap} to a non-root container, where added capabilities are \
                     not effective"
                ));
            } else if !BASELINE_CAPABILITIES.contains(&cap.as_str()) && namespace != "kube-system" {
                problems.push(format!(
                    "{at}: adds {cap}, which the `baseline` Pod Security level forbids"
                ));
            }
            if cap == "SYS_ADMIN" {
                problems.push(format!("{at}: adds SYS_ADMIN"));
            }
        }
        if c["securityContext"]["privileged"].as_bool() == Some(true) {
            problems.push(format!("{at}: is privileged"));
        }

        let mounts: Vec<(&str, &str)> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or(""),
                    m["mountPath"].as_str().unwrap_or(""),
                )
            })
            .collect();
        for (volume, path) in &mounts {
            if !volumes.contains(volume) {
                problems.push(format!(
                    "{at}: mounts volume `{volume}` at {path}, but the pod has no such volume"
                ));
            }
        }

        let args: Vec<String> = strings(&c["command"])
            .into_iter()
            .chain(strings(&c["args"]))
            .collect();
        for (i, arg) in args.iter().enumerate() {
            let path = arg.split_once('=').map_or(arg.as_str(), |(_, v)| v);
            let flag = arg
                .split_once('=')
                .map_or_else(|| if i > 0 { args[i - 1].as_str() } else { "" }, |(f, _)| f);
            if !path.starts_with('/') || NOT_FILE_FLAGS.contains(&flag) {
                continue;
            }
            let mounted = mounts.iter().any(|(_, m)| {
                path == *m || path.starts_with(&format!("{}/", m.trim_end_matches('/')))
            });
            if !mounted {
                problems.push(format!(
                    "{at}: argument `{arg}` names {path}, which is under no volume mount (the \
                     image has nothing there)"
                ));
            }
        }

        let ports: Vec<(Option<&str>, i64)> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str(), p["containerPort"].as_i64().unwrap_or(0)))
            .collect();
        let metrics = arg_value(&args, "--metrics-addr");
        let metrics_port = metrics
            .as_deref()
            .and_then(|m| m.rsplit_once(':'))
            .and_then(|(_, p)| p.parse::<i64>().ok());
        for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
            let p = &c[probe];
            if p.is_null() {
                continue;
            }
            let Some(get) = p["httpGet"].as_object() else {
                problems.push(format!(
                    "{at}: {probe} is not an httpGet of /healthz (a TCP probe of a TLS port makes \
                     the server log failed handshakes)"
                ));
                continue;
            };
            let port = match &get["port"] {
                serde_json::Value::String(name) => {
                    match ports.iter().find(|(n, _)| *n == Some(name.as_str())) {
                        Some((_, number)) => Some(*number),
                        None => {
                            problems.push(format!(
                                "{at}: {probe} uses port `{name}`, which the container does not \
                                 declare"
                            ));
                            None
                        }
                    }
                }
                serde_json::Value::Number(n) => n.as_i64(),
                _ => None,
            };
            if let (Some(port), false) = (port, ports.is_empty()) {
                if !ports.iter().any(|(_, n)| *n == port) {
                    problems.push(format!(
                        "{at}: {probe} probes port {port}, which the container does not declare"
                    ));
                }
            }
            if port.is_some() && port != metrics_port {
                problems.push(format!(
                    "{at}: {probe} probes port {port:?}, but /healthz is served on \
                     --metrics-addr {metrics:?}"
                ));
            }
            let path = get.get("path").and_then(|p| p.as_str()).unwrap_or("/");
            if !["/healthz", "/livez", "/readyz"].contains(&path) {
                problems.push(format!("{at}: {probe} asks for {path}, not /healthz"));
            }
            let loopback_probe = get
                .get("host")
                .and_then(|h| h.as_str())
                .is_some_and(|h| h.starts_with("127.") || h == "localhost");
            let loopback_metrics = metrics
                .as_deref()
                .is_some_and(|m| m.starts_with("127.") || m.starts_with("localhost:"));
            if loopback_metrics && !(host_network && loopback_probe) {
                problems.push(format!(
                    "{at}: {probe} cannot reach /healthz: --metrics-addr {metrics:?} is loopback, \
                     and the kubelet probes the pod IP unless the pod uses hostNetwork and the \
                     probe sets host: 127.0.0.1"
                ));
            }
            if !loopback_metrics && !args.iter().any(|a| a == "--metrics-allow-remote") {
                problems.push(format!(
                    "{at}: --metrics-addr {metrics:?} is not loopback and needs \
                     --metrics-allow-remote"
                ));
            }
        }
    }
    problems
}

/// What is wrong with one object of a manifest.
fn check_object(file: &Path, object: &serde_json::Value) -> Vec<String> {
    let kind = object["kind"].as_str().unwrap_or("?");
    let name = object["metadata"]["name"].as_str().unwrap_or("?");
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let what = format!("{}: {kind} {name}", file.display());
    let mut problems = Vec::new();
    let spec = match kind {
        "Pod" => Some(&object["spec"]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => {
            Some(&object["spec"]["template"]["spec"])
        }
        _ => None,
    };
    if let Some(spec) = spec {
        problems.extend(check_pod_spec(
            &what,
            namespace,
            spec,
            &object["spec"]["volumeClaimTemplates"],
        ));
    }
    if kind == "Service"
        && object["spec"]["type"] == "LoadBalancer"
        && strings(&object["spec"]["loadBalancerSourceRanges"]).is_empty()
    {
        problems.push(format!(
            "{what}: a LoadBalancer without loadBalancerSourceRanges is open to every address"
        ));
    }
    problems
}

#[test]
fn manifests_parse_and_keep_their_promises() {
    let root = repo_root();
    let mut problems = Vec::new();
    let mut checked = 0;
    for file in manifest_files(&root) {
        let Some(objects) = kubectl_objects(&root, &file) else {
            println!("skipping the manifest checks: kubectl is not installed");
            return;
        };
        match objects {
            Err(e) => problems.push(format!("{}: kubectl cannot read it: {e}", file.display())),
            Ok(objects) => {
                for object in &objects {
                    checked += 1;
                    problems.extend(check_object(&file, object));
                }
            }
        }
    }
    assert!(checked >= 8, "only {checked} objects found under deploy/");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The checks above catch what they claim to: a manifest with every mistake they look for.
#[test]
fn manifest_checks_catch_each_mistake() {
    let bad = serde_json::json!({
        "kind": "Deployment",
        "metadata": {"name": "bad", "namespace": "coffer-system"},
        "spec": {"template": {"spec": {
            "volumes": [{"name": "data"}],
            "containers": [{
                "name": "keyd",
                "args": ["keyd", "serve", "--data-dir=/var/lib/coffer-keyd",
                         "--policy=/etc/coffer/policy.yaml", "--metrics-addr=127.0.0.1:9465"],
                "ports": [{"name": "keyd", "containerPort": 7443}],
                "readinessProbe": {"tcpSocket": {"port": 7443}},
                "livenessProbe": {"httpGet": {"port": "metrics", "path": "/"}},
                "securityContext": {"runAsUser": 10001, "capabilities": {"add": ["IPC_LOCK"]}},
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/coffer-keyd"},
                                 {"name": "config", "mountPath": "/etc/config"}]
            }]
        }}}
    });
    let problems = check_object(Path::new("bad.yaml"), &bad).join("\n");
    for expected in [
        "adds IPC_LOCK to a non-root container",
        "mounts volume `config`",
        "names /etc/coffer/policy.yaml",
        "readinessProbe is not an httpGet",
        "uses port `metrics`, which the container does not declare",
        "asks for /, not /healthz",
    ] {
        assert!(
            problems.contains(expected),
            "missed {expected:?} in:\n{problems}"
        );
    }
    let service = serde_json::json!({
        "kind": "Service", "metadata": {"name": "s"}, "spec": {"type": "LoadBalancer"}
    });
    assert_eq!(check_object(Path::new("s.yaml"), &service).len(), 1);
    let root_pod = serde_json::json!({
        "kind": "Pod", "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c",
            "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}
    });
    let problems = check_object(Path::new("p.yaml"), &root_pod).join("\n");
    assert!(problems.contains("forbids"), "{problems}");
}

/// The first shell block after `heading` in `file`, as logical lines with their line numbers.
fn walkthrough(root: &Path, file: &str, heading: &str) -> Vec<(usize, String)> {
    let text = fs::read_to_string(root.join(file)).unwrap();
    let at = text
        .lines()
        .position(|l| l.starts_with('#') && l.contains(heading))
        .unwrap_or_else(|| panic!("{file} has no heading {heading:?}"));
    let (fences, _) = split_markdown(&text);
    let fence = fences
        .iter()
        .find(|f| f.first_line > at + 1 && SHELL_FENCES.contains(&f.lang.as_str()))
        .unwrap_or_else(|| panic!("{file}: no shell block after {heading:?}"));
    logical_lines(fence.first_line, &fence.lines)
}

/// Turns a walk-through into a script that runs unattended in `dir`: the release binary is the
/// one under test, `/tmp/` is `dir`, keyd's port is `port`, hand-copied signer values are filled
/// in, servers run in the background until they are ready, and load runs for one second.
fn walkthrough_script(
    lines: &[(usize, String)],
    file: &str,
    dir: &Path,
    port: u16,
) -> (String, usize) {
    let bin = coffer_bin();
    let dir = dir.display().to_string();
    let mut script = format!(
        "set -eux\n\
         BIN='{bin}'\nDIR='{dir}'\ncd \"$DIR\"\n\
         PIDS=''\n\
         trap 'for p in $PIDS; do kill $p 2>/dev/null || true; done; wait' EXIT\n\
         signer() {{ \"$BIN\" attest verify --evidence \"$1\" 2>/dev/null \
            | sed -n 's/.*\"signer\": *\"\\([0-9a-f]*\\)\".*/\\1/p'; }}\n\
         wait_for() {{ i=0; until grep -q \"$2\" \"$1\" 2>/dev/null; do i=$((i+1)); \
            if [ $i -gt 600 ] || ! kill -0 \"$3\" 2>/dev/null; then \
            echo \"no '$2' in $1:\"; cat \"$1\"; exit 1; fi; \
            sleep 0.1; done; }}\n"
    );
    let mut servers = 0;
    for (n, line) in lines {
        // `/tmp/` first: the binary's own path may lie under /tmp (a clone there).
        let mut line = line
            .replace("/tmp/", &format!("{dir}/"))
            .replace("./target/release/coffer", bin)
            .replace("127.0.0.1:7443", &format!("127.0.0.1:{port}"))
            .replace("--duration 10s", "--duration 1s")
            .replace(
                "<the plugin's signer hex>",
                &format!("$(signer {dir}/plugin-evidence.json)"),
            )
            .replace(
                "<keyd's signer hex>",
                &format!("$(signer {dir}/keyd-evidence.json)"),
            );
        if line.trim_start().starts_with("cargo build") {
            continue; // the binary under test is already built
        }
        let ready = if line.contains("keyd serve") {
            Some("keyd ready")
        } else if line.contains("kms serve") && line.contains("--keyd") {
            Some("keyd answers; primary key")
        } else if line.contains("kms serve") {
            Some("coffer kms serving")
        } else {
            None
        };
        if let Some(ready) = ready {
            servers += 1;
            let log = format!("{dir}/server-{servers}.log");
            let command = without_comment(&line);
            let command = command.trim_end().trim_end_matches('&').trim_end();
            line =
                format!("{command} >{log} 2>&1 &\nPIDS=\"$PIDS $!\"\nwait_for {log} '{ready}' $!");
        }
        script.push_str(&format!("# {file}:{n}\n{line}\n"));
    }
    (script, servers)
}

/// `line` without its trailing shell comment.
fn without_comment(line: &str) -> String {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return line[..i].to_string(),
            None => {}
        }
        previous = c;
    }
    line.to_string()
}

/// Runs a walk-through script; panics with its output if it fails or hangs, returns its
/// output (stdout) otherwise.
fn run_walkthrough(name: &str, script: &str) -> String {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("output");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(dir.path().join("stderr")).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            common::signal(child.id(), "KILL");
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(format!("-{}", child.id()))
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let output =
        stdout.clone() + &fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();
    match status {
        Some(s) if s.success() => stdout,
        Some(s) => panic!("{name} failed ({s}) as written:\n{script}\n--- output ---\n{output}"),
        None => panic!("{name} did not finish in 180 s:\n{script}\n--- output ---\n{output}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// README's "Try it against the API" runs as written.
#[test]
fn readme_walkthrough_runs() {
    let root = repo_root();
    let lines = walkthrough(&root, "README.md", "Try it against the API");
    let dir = tempfile::tempdir().unwrap();
    let (script, servers) = walkthrough_script(&lines, "README.md", dir.path(), free_port());
    assert_eq!(
        servers, 1,
        "README's walk-through starts one plugin:\n{script}"
    );
    run_walkthrough("README.md, \"Try it against the API\"", &script);
}

/// keyd.md's "Try it on one machine" runs as written, and the plugin it ends with serves
/// through keyd (the `coffer bench kms` the text names right after the block).
#[test]
fn keyd_one_machine_walkthrough_runs() {
    let root = repo_root();
    let mut lines = walkthrough(&root, "docs/keyd.md", "Try it on one machine");
    let text = fs::read_to_string(root.join("docs/keyd.md")).unwrap();
    let bench = "coffer bench kms --socket /tmp/kms.sock";
    assert!(
        text.contains(&format!("`{bench}` then drives it")),
        "docs/keyd.md no longer names {bench:?} after the one-machine block"
    );
    lines.push((0, format!("./target/release/{bench} --duration 1s")));
    let dir = tempfile::tempdir().unwrap();
    let (script, servers) = walkthrough_script(&lines, "docs/keyd.md", dir.path(), free_port());
    assert_eq!(
        servers, 2,
        "keyd.md's walk-through starts keyd and a plugin:\n{script}"
    );
    assert!(
        !script.contains("signer hex>"),
        "a signer placeholder was not filled in:\n{script}"
    );
    run_walkthrough("docs/keyd.md, \"Try it on one machine\"", &script);
}

/// Every shell block of `file` from the heading containing `from` up to the one containing
/// `until`, indented ones (inside list items) included, in order.
fn shell_blocks_between(root: &Path, file: &str, from: &str, until: &str) -> Vec<(usize, String)> {
    let text = fs::read_to_string(root.join(file)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.starts_with('#') && l.contains(from))
        .unwrap_or_else(|| panic!("{file} has no heading {from:?}"));
    let end = lines
        .iter()
        .skip(start)
        .position(|l| l.starts_with('#') && l.contains(until))
        .map(|i| i + start)
        .unwrap_or_else(|| panic!("{file} has no heading {until:?} after {from:?}"));
    let mut out = Vec::new();
    let mut i = start;
    while i < end {
        if lines[i].trim_start() == "```sh" {
            let indent = lines[i].len() - lines[i].trim_start().len();
            let first = i + 2;
            let mut body = Vec::new();
            i += 1;
            while i < end && lines[i].trim_start() != "```" {
                body.push(lines[i].get(indent..).unwrap_or("").to_string());
                i += 1;
            }
            out.extend(logical_lines(first, &body));
        }
        i += 1;
    }
    out
}

/// kubectl-coffer.md's sections 1 to 6 run as written, in order, through the real kubectl's
/// plugin mechanism (`kubectl coffer …` finds `kubectl-coffer` on PATH).
#[test]
fn kubectl_coffer_walkthrough_runs() {
    let root = repo_root();
    let lines = shell_blocks_between(
        &root,
        "docs/kubectl-coffer.md",
        "1. Try it on one machine",
        "7. Who sees what",
    );
    assert!(
        lines
            .iter()
            .any(|(_, l)| l.contains("kubectl coffer reseal"))
            && lines
                .iter()
                .any(|(_, l)| l.contains("kubectl coffer seal --raw")),
        "the extraction missed blocks of docs/kubectl-coffer.md: {lines:?}"
    );
    let plugin_dir = kubectl_coffer_bin().parent().unwrap().to_path_buf();
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<(usize, String)> = lines
        .into_iter()
        .map(|(n, line)| {
            let line = line
                .replace(
                    "$(coffer attest verify --evidence keyd-evidence.json | jq -r .measurements.signer)",
                    "$(signer keyd-evidence.json)",
                )
                .replace("coffer keyd ", "./target/release/coffer keyd ")
                .replace("coffer attest ", "./target/release/coffer attest ")
                .replace("kubectl ./target/release/coffer", "kubectl coffer");
            (n, line)
        })
        .collect();
    let (script, servers) =
        walkthrough_script(&lines, "docs/kubectl-coffer.md", dir.path(), free_port());
    assert_eq!(servers, 1, "the walk-through starts keyd once:\n{script}");
    let script = format!(
        "export PATH='{}':\"$PATH\"\nexport HOME='{}'\n{script}",
        plugin_dir.display(),
        dir.path().display()
    );
    run_walkthrough("docs/kubectl-coffer.md, sections 1 to 6", &script);
}

/// workloads.md's "Try it on one machine" runs as written: keyd, `kubectl coffer seal`, a
/// kubelet-like Secret volume and environment, and `coffer run` starting an app that prints
/// the plaintext it was given, while the volume and the manifest hold only sealed values.
#[test]
fn workloads_walkthrough_runs() {
    let root = repo_root();
    let lines = walkthrough(&root, "docs/workloads.md", "Try it on one machine");
    let bin_dir = Path::new(coffer_bin()).parent().unwrap().to_path_buf();
    kubectl_coffer_bin();
    let dir = tempfile::tempdir().unwrap();
    // /dev/shm is the tmpfs --out needs; one directory per run of this test.
    let out = format!("/dev/shm/coffer-docs-{}", std::process::id());
    let lines: Vec<(usize, String)> = lines
        .into_iter()
        .map(|(n, line)| {
            let line = line
                .replace(
                    "$(coffer attest verify --evidence app-evidence.json | jq -r .measurements.signer)",
                    "$(signer app-evidence.json)",
                )
                .replace(
                    "$(coffer attest verify --evidence keyd-evidence.json | jq -r .measurements.signer)",
                    "$(signer keyd-evidence.json)",
                )
                .replace("/dev/shm/wl-out", &out);
            (n, line)
        })
        .collect();
    let (script, servers) =
        walkthrough_script(&lines, "docs/workloads.md", dir.path(), free_port());
    assert_eq!(servers, 1, "the walk-through starts keyd once:\n{script}");
    assert!(
        !script.contains("jq "),
        "a signer was not filled in:\n{script}"
    );
    let script = format!(
        "export PATH='{}':\"$PATH\"\nexport HOME='{}'\n{script}",
        bin_dir.display(),
        dir.path().display()
    );
    let output = run_walkthrough("docs/workloads.md, \"Try it on one machine\"", &script);
    for expected in [
        "env: correct horse battery staple",
        "file: correct horse battery staple",
        "db/password:1",
    ] {
        assert!(output.contains(expected), "no {expected:?} in:\n{output}");
    }
    assert!(!Path::new(&out).exists(), "{out} was left behind");
}
