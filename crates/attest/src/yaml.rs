//! YAML error text that always says where. serde_yaml_ng leaves the position out of its text
//! for errors at the very start of the document, and an empty file has no position at all.

/// The parser's message for `error` in `text`, always ending with a line and column.
pub fn error_text(error: &serde_yaml_ng::Error, text: &str) -> String {
    if text.trim().is_empty() {
        return "the file is empty at line 1 column 1".to_string();
    }
    let message = error.to_string();
    match error.location() {
        Some(_) if message.contains(" at line ") => message,
        Some(at) => format!("{message} at line {} column {}", at.line(), at.column()),
        // Only errors about the document as a whole have no position: it starts at 1:1.
        None => format!("{message} at line 1 column 1"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_line_and_column() {
        #[derive(serde::Deserialize, Debug)]
        struct Doc {
            #[allow(dead_code)]
            a: String,
        }
        for text in ["", "- 1\n", "a: [\n", "b: 1\n"] {
            let e = serde_yaml_ng::from_str::<Doc>(text).unwrap_err();
            let message = error_text(&e, text);
            assert!(message.contains(" at line "), "{text:?}: {message}");
        }
    }
}
