//! Log output: human text or JSON lines on stderr, filtered by level.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

/// What a filter looks like, quoted in every refusal.
const FILTER_SYNTAX: &str = "use a level (off, error, warn, info, debug, trace) or \
                             comma-separated directives such as `info,coffer=debug` or \
                             `warn,coffer::audit=info`";

/// Installs the global subscriber. `RUST_LOG`, if set and not empty, overrides `--log-level`.
///
/// Refuses an invalid `RUST_LOG` rather than falling back: a typo must not change what is
/// logged, least of all the audit lines.
pub fn init(args: &LogArgs) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.trim().is_empty() => {
            check_filter(&env).map_err(|e| format!("RUST_LOG: {e}"))?
        }
        _ => args.log_level.clone(),
    };
    let filter = EnvFilter::builder()
        .parse(&filter)
        .map_err(|e| format!("log filter {filter:?}: {e}: {FILTER_SYNTAX}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(true)
        .with_ansi(std::io::stderr().is_terminal());
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// Checks a log filter strictly (the `--log-level` value parser, and `RUST_LOG`).
///
/// `EnvFilter` reads a bare word that is not a level as a target name, so `verbose` would
/// silently mean "only the `verbose` target" and drop every other line, audit lines included.
/// Here every directive must be a level, or `TARGET=LEVEL` / `TARGET[SPAN]=LEVEL`.
pub fn check_filter(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Err(format!("the filter is empty: {FILTER_SYNTAX}"));
    }
    for directive in text.split(',').map(str::trim) {
        if directive.is_empty() {
            continue;
        }
        let (selector, level) = match directive.rsplit_once('=') {
            // `=` inside a span's field filter (`t[s{f=v}]`) is not the level separator.
            Some((selector, level)) if !level.contains(['}', ']']) => (Some(selector), level),
            _ => (None, directive),
        };
        if !is_level(level) {
            let what = match selector {
                Some(selector) => format!("{level:?} in {selector}={level} is not a level"),
                None => format!("{directive:?} is not a level"),
            };
            return Err(format!("{what}: {FILTER_SYNTAX}"));
        }
        if selector.is_some_and(|s| s.trim().is_empty()) {
            return Err(format!(
                "{directive:?} names no target before '=': {FILTER_SYNTAX}"
            ));
        }
    }
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| format!("{e}: {FILTER_SYNTAX}"))?;
    Ok(text.to_string())
}

fn is_level(word: &str) -> bool {
    ["off", "error", "warn", "info", "debug", "trace"]
        .iter()
        .any(|level| word.trim().eq_ignore_ascii_case(level))
}

#[cfg(test)]
mod tests {
    use super::check_filter;

    #[test]
    fn only_levels_and_target_directives_pass() {
        for good in [
            "info",
            "WARN",
            "info,coffer=debug",
            "warn,coffer::audit=info",
            "coffer[serve]=trace",
            "coffer[serve{socket=x}]=debug",
        ] {
            assert_eq!(check_filter(good).as_deref(), Ok(good), "{good}");
        }
        for bad in ["verbose", "info,verbose", "coffer=loud", "", "=info"] {
            let err = check_filter(bad).unwrap_err();
            assert!(err.contains("info,coffer=debug"), "{bad}: {err}");
        }
    }
}
