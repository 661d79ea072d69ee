//! Where the root is and which token the CLI shows it.
//!
//! The root: `--root`, `BANYAN_ROOT`, `root = "..."` in the config file, else loopback.
//! The token, first found: `--token-file FILE`, `--token TOKEN`, `BANYAN_TOKEN`,
//! `BANYAN_ADMIN_TOKEN`, `token_file = "..."` in the config file, and on the root's own host the
//! admin token of its state dir (`$BANYAN_STATE_DIR/admin-token`, `/var/lib/banyan-root/admin-token`)
//! when this user may read it. The config file is `$XDG_CONFIG_HOME/banyan/config.toml`, else
//! `~/.config/banyan/config.toml`.

use std::path::{Path, PathBuf};

use crate::api::CliError;

/// The root's state dir when `banyan-root` runs with its defaults.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/banyan-root";
/// The root's HTTP API when nothing else is said.
pub const DEFAULT_ROOT: &str = "http://127.0.0.1:1337";

/// What `config.toml` may say.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// URL of the root's HTTP API.
    pub root: Option<String>,
    /// A file holding the token to show the root (`~/` is the home directory).
    pub token_file: Option<String>,
}

/// The config file's path, whether or not it exists.
pub fn config_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".config")))
        .map(|dir| dir.join("banyan").join("config.toml"))
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Reads the config file; a missing file is an empty config, a malformed one an error.
pub fn load() -> Result<Config, CliError> {
    let Some(path) = config_path() else {
        return Ok(Config::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| CliError::Usage(format!("{}: {}", path.display(), e.message()))),
        Err(_) => Ok(Config::default()),
    }
}

/// Where the root's API is: `given` (`--root`/`BANYAN_ROOT`), else the config file, else loopback.
pub fn root_url(given: Option<&str>) -> Result<String, CliError> {
    if let Some(r) = given {
        return Ok(r.to_string());
    }
    Ok(load()?.root.unwrap_or_else(|| DEFAULT_ROOT.to_string()))
}

/// What the command line says about the token.
#[derive(Debug, Clone, Default)]
pub struct TokenArgs {
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
}

/// The token found, or why none was: the reason is shown when the root then refuses a request.
#[derive(Debug, Clone)]
pub enum Token {
    Found {
        token: String,
        from: String,
    },
    /// No source named one, and the defaults were not readable: this says where it looked.
    None(String),
}

/// Finds the token (see the module documentation for the order). An explicitly named file that
/// cannot be read is an error; default places that cannot be read are skipped.
pub fn find_token(args: &TokenArgs) -> Result<Token, CliError> {
    if let Some(file) = &args.token_file {
        return read_token(file, "--token-file");
    }
    if let Some(t) = &args.token {
        return found(t, "--token");
    }
    for var in ["BANYAN_TOKEN", "BANYAN_ADMIN_TOKEN"] {
        if let Some(t) = std::env::var(var).ok().filter(|t| !t.trim().is_empty()) {
            return found(&t, var);
        }
    }
    if let Some(file) = load()?.token_file {
        let path = match file.strip_prefix("~/") {
            Some(rest) => home().map_or_else(|| PathBuf::from(&file), |h| h.join(rest)),
            None => PathBuf::from(&file),
        };
        let what = config_path().map_or("config.toml".into(), |p| {
            format!("token_file in {}", p.display())
        });
        return read_token(&path, &what);
    }
    let mut tried = Vec::new();
    let dirs = std::env::var_os("BANYAN_STATE_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from(DEFAULT_STATE_DIR)]);
    for dir in dirs {
        let path = dir.join("admin-token");
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => return found(&t, &path.display().to_string()),
            Ok(_) => tried.push(format!("{} is empty", path.display())),
            Err(e) => tried.push(format!("cannot read {}: {e}", path.display())),
        }
    }
    Ok(Token::None(format!(
        "no token given: use --token-file FILE, BANYAN_TOKEN, or token_file in {} ({})",
        config_path().map_or("~/.config/banyan/config.toml".into(), |p| p
            .display()
            .to_string()),
        tried.join("; ")
    )))
}

fn found(token: &str, from: &str) -> Result<Token, CliError> {
    Ok(Token::Found {
        token: token.trim().to_string(),
        from: from.to_string(),
    })
}

fn read_token(path: &Path, what: &str) -> Result<Token, CliError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        CliError::Usage(format!(
            "cannot read the token file {} ({what}): {e}",
            path.display()
        ))
    })?;
    if text.trim().is_empty() {
        return Err(CliError::Usage(format!(
            "the token file {} ({what}) is empty",
            path.display()
        )));
    }
    found(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_token_file_wins_and_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("banyan-cli-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t");
        std::fs::write(&file, "BNYT.secret\n").unwrap();
        let args = TokenArgs {
            token: Some("other".into()),
            token_file: Some(file.clone()),
        };
        match find_token(&args).unwrap() {
            Token::Found { token, .. } => assert_eq!(token, "BNYT.secret"),
            other => panic!("{other:?}"),
        }
        std::fs::write(&file, "  \n").unwrap();
        assert!(find_token(&args)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        std::fs::remove_dir_all(&dir).unwrap();
        let missing = TokenArgs {
            token: None,
            token_file: Some(dir.join("nope")),
        };
        let e = find_token(&missing).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--token-file"), "{e}");
    }

    #[test]
    fn the_config_file_refuses_unknown_keys() {
        assert!(toml::from_str::<Config>("root = \"http://h:1337\"\ntoken_file = \"~/t\"").is_ok());
        assert!(toml::from_str::<Config>("roots = \"x\"").is_err());
    }
}
