//! Secrets (passwords, API keys): where they come from and how they are kept out of output.
//!
//! Contract: a [`Secret`] is read from an environment variable named in the configuration
//! (`…_env`) or from a file (`…_file`, Docker/Kubernetes secret style; trailing whitespace is
//! ignored), never from the command line or the config text itself. Its `Debug` prints `***`
//! and it has no `Display` or `Serialize`, so it cannot reach a log line, an error message, a
//! status report or a panic by accident; code that needs the value calls [`Secret::expose`]
//! at the single place it is handed to a client library. Read errors name the config key and
//! the variable or file, never the content.

use std::path::Path;

/// A secret value; see the module doc.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for handing to a client library. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Reads a secret from the environment variable `var` (looked up in `env`) or from `file`;
/// `None` when neither is configured. The error is a constraint for the config key.
pub fn read(var: Option<&str>, file: Option<&Path>, env: &[(String, String)]) -> Result<Option<Secret>, String> {
    match (var, file) {
        (Some(_), Some(_)) => Err("set either the _env or the _file key, not both".into()),
        (Some(var), None) => match env.iter().rev().find(|(v, _)| v == var) {
            Some((_, value)) if !value.is_empty() => Ok(Some(Secret::new(value.clone()))),
            _ => Err(format!("environment variable {var} is not set or empty")),
        },
        (None, Some(path)) => {
            let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let text = String::from_utf8(text).map_err(|_| format!("{} is not UTF-8 text", path.display()))?;
            let value = text.trim_end();
            if value.is_empty() {
                return Err(format!("{} is empty", path.display()));
            }
            Ok(Some(Secret::new(value)))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_env_or_file_and_never_show() {
        let env = vec![("PW".to_string(), "s3cret-value".to_string())];
        let s = read(Some("PW"), None, &env).unwrap().unwrap();
        assert_eq!(s.expose(), "s3cret-value");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        let e = read(Some("MISSING"), None, &env).unwrap_err();
        assert!(e.contains("MISSING is not set"), "{e}");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "from-file-secret\n").unwrap();
        assert_eq!(
            read(None, Some(f.path()), &env).unwrap().unwrap().expose(),
            "from-file-secret"
        );
        assert!(read(Some("PW"), Some(f.path()), &env).is_err());
        std::fs::write(f.path(), "\n").unwrap();
        let e = read(None, Some(f.path()), &env).unwrap_err();
        assert!(e.contains("is empty"), "{e}");
        assert_eq!(read(None, None, &env).unwrap(), None);
    }
}
