//! Reading fedrun's own sources line by line, for tests that hold a rule over the code
//! itself (every serde enum has samples, every imbl field a reader of its own).
#![allow(dead_code)]

/// The attribute and doc-comment lines right above line `at`, nearest first, indented or
/// not.
pub fn attributes_above<'a>(lines: &'a [&'a str], at: usize) -> impl Iterator<Item = &'a str> {
    lines[..at]
        .iter()
        .rev()
        .map(|line| line.trim_start())
        .take_while(|line| line.starts_with("#[") || line.starts_with("///"))
}

/// The Rust identifier `text` starts with (empty when it starts with anything else).
pub fn leading_identifier(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}
