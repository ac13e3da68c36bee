//! `${VAR}` and `${VAR:-default}` in every string of a config file.
//!
//! Interpolation runs after the typed parse (so syntax and key errors keep their exact
//! locations) over a JSON image of the parsed config, so that every string is covered
//! without listing fields by hand. `$$` escapes a literal `$`.

use std::path::Path;

use serde_json::Value;

use super::error::{ConfigError, Diagnostic};
use super::model::FileConfig;

pub fn interpolate_config(
    path: &Path,
    text: &str,
    config: FileConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<FileConfig, ConfigError> {
    if !text.contains('$') {
        return Ok(config);
    }
    let mut value = serde_json::to_value(&config).map_err(|e| internal(path, e))?;
    walk(&mut value, String::new(), &mut |key, s| {
        expand(s, env).map_err(|var| {
            let hint = text.find(&format!("${{{var}")).map(|off| super::error::line_col(text, off));
            let mut d = Diagnostic::new(
                path,
                key,
                &format!("environment variable `{var}` is not set (write `${{{var}:-default}}` to give a default)"),
            );
            if let Some((line, col)) = hint {
                d.line = Some(line);
                d.column = Some(col);
            }
            ConfigError::invalid(d)
        })
    })?;
    serde_json::from_value(value).map_err(|e| internal(path, e))
}

fn internal(path: &Path, e: serde_json::Error) -> ConfigError {
    ConfigError::invalid(Diagnostic::new(
        path,
        "",
        &format!("internal error while interpolating: {e}"),
    ))
}

fn walk(
    value: &mut Value,
    key: String,
    f: &mut dyn FnMut(&str, &str) -> Result<String, ConfigError>,
) -> Result<(), ConfigError> {
    match value {
        Value::String(s) if s.contains('$') => *s = f(&key, s)?,
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{key}[{i}]"), f)?;
            }
        }
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                let child = if key.is_empty() {
                    k.clone()
                } else {
                    format!("{key}.{k}")
                };
                walk(v, child, f)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Expands one string; on an unset variable without default, returns its name.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{')
            && let Some(end) = body.find('}')
        {
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            match (
                env(name).filter(|v| !v.is_empty() || default.is_none()),
                default,
            ) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(name.to_string()),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME" => Some("/home/u".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("${HOME}/x", &env).unwrap(), "/home/u/x");
        assert_eq!(expand("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("${EMPTY}", &env).unwrap(), "");
        assert_eq!(
            expand("cost $$5 and $PATH", &env).unwrap(),
            "cost $5 and $PATH"
        );
        assert_eq!(expand("${NOPE}", &env).unwrap_err(), "NOPE");
    }
}
