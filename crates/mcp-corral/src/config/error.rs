//! Config errors that point at file, line, column and key, with a suggestion for typos.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use super::Format;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", file.display())]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

impl ConfigError {
    pub fn invalid(d: Diagnostic) -> ConfigError {
        ConfigError::Invalid(Box::new(d))
    }
}

/// Where a config is wrong and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Dotted key path, e.g. `servers[0].restartOnFailur`.
    pub key: String,
    pub message: String,
    pub suggestion: Option<String>,
}

impl Diagnostic {
    pub fn new(file: &Path, key: &str, message: &str) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line: None,
            column: None,
            key: key.to_string(),
            message: message.to_string(),
            suggestion: None,
        }
    }

    pub fn with_suggestion(mut self, suggestion: Option<String>) -> Diagnostic {
        self.suggestion = suggestion;
        self
    }

    /// Finds the line of the key path's last segment in the source text when the parser could
    /// not say (errors found after parsing, such as a duplicate id).
    pub fn locate(mut self, text: &str) -> Diagnostic {
        if self.line.is_some() {
            return self;
        }
        let segments: Vec<&str> = self
            .key
            .split(['.', '['])
            .map(|s| s.trim_end_matches(']'))
            .filter(|s| !s.is_empty() && s.parse::<usize>().is_err())
            .collect();
        // Walk the segments in order so `servers.b.command` finds b's command, not a's.
        let mut from = 0usize;
        let mut found = None;
        for seg in &segments {
            let hit = text[from..].find(seg).map(|i| i + from);
            if let Some(i) = hit {
                found = Some(i);
                from = i + seg.len();
            }
        }
        if let Some(offset) = found {
            let (line, column) = line_col(text, offset);
            self.line = Some(line);
            self.column = Some(column);
        }
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        if self.key.is_empty() {
            write!(f, ": {}", self.message)?;
        } else {
            write!(f, ": `{}`: {}", self.key, self.message)?;
        }
        if let Some(s) = &self.suggestion {
            write!(f, " (did you mean `{s}`?)")?;
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, column)
}

/// The candidate closest to `word`, if it is close enough to be a plausible typo.
pub fn nearest(word: &str, candidates: &[&str]) -> Option<String> {
    candidates
        .iter()
        .map(|c| {
            (
                strsim::jaro_winkler(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c.to_string())
}

/// Deserialises `text` as `T`, turning any error into a [`Diagnostic`] with a location.
pub fn parse_typed<T: DeserializeOwned>(
    path: &Path,
    text: &str,
    format: Format,
) -> Result<T, ConfigError> {
    let (key, message, line, column) = match format {
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let key = e.path().to_string();
                    let inner = e.into_inner();
                    let (l, c) = (inner.line(), inner.column());
                    (key, strip_position(&inner.to_string()), Some(l), Some(c))
                }
            }
        }
        Format::Yaml => {
            let de = serde_norway::Deserializer::from_str(text);
            match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let key = e.path().to_string();
                    let inner = e.into_inner();
                    let loc = inner.location();
                    (
                        key,
                        strip_position(&inner.to_string()),
                        loc.as_ref().map(|l| l.line()),
                        loc.as_ref().map(|l| l.column()),
                    )
                }
            }
        }
        Format::Toml => {
            let de = toml::Deserializer::parse(text).map_err(|e| toml_diag(path, text, "", &e))?;
            match serde_path_to_error::deserialize::<_, T>(de) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let key = e.path().to_string();
                    return Err(toml_diag(path, text, &key, e.inner()));
                }
            }
        }
    };
    Err(ConfigError::invalid(diagnose(
        path, &key, &message, line, column,
    )))
}

fn toml_diag(path: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let (line, column) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (Some(l), Some(c))
        }
        None => (None, None),
    };
    ConfigError::invalid(diagnose(path, key, e.message(), line, column))
}

/// serde_json and serde_norway append " at line X column Y"; Corral prints the location itself.
fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into a short message with a
/// suggestion, and `.` (serde_path_to_error's root) into an empty key path.
fn diagnose(
    path: &Path,
    key: &str,
    message: &str,
    line: Option<usize>,
    column: Option<usize>,
) -> Diagnostic {
    let key = if key == "." { "" } else { key };
    let mut diag = Diagnostic::new(path, key, message);
    diag.line = line;
    diag.column = column;
    // serde_norway prefixes its own path (`servers[0]: unknown field …`); the key is shown separately.
    let message = ["unknown field", "unknown variant"]
        .iter()
        .find_map(|k| message.find(k).map(|i| &message[i..]))
        .unwrap_or(message);
    diag.message = message.to_string();
    for kind in ["unknown field", "unknown variant"] {
        if let Some(rest) = message.strip_prefix(kind) {
            let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
            if let Some((word, expected)) = names.split_first() {
                let what = if kind == "unknown field" {
                    "unknown key"
                } else {
                    "unknown value"
                };
                diag.message = format!("{what} `{word}`");
                if !expected.is_empty() {
                    diag.message
                        .push_str(&format!(" (expected one of: {})", expected.join(", ")));
                }
                diag.suggestion = nearest(word, expected);
                if kind == "unknown field" && !diag.key.ends_with(word) {
                    diag.key = if diag.key.is_empty() {
                        word.to_string()
                    } else {
                        format!("{}.{word}", diag.key)
                    };
                }
            }
        }
    }
    diag
}
