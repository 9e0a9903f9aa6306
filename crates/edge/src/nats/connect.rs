//! How weir reaches NATS: the server list, credentials and TLS of
//! `[nats]`, turned into async-nats's own [`async_nats::ConnectOptions`]
//! (weir adds no NATS logic of its own: reconnection, server discovery,
//! nkey signing, JWT credentials and TLS are the client's).
//!
//! Secrets never sit in the config file or on a command line: each is read
//! from a file (`password_file`, `token_file`, `nkey_seed_file`,
//! `creds_file`) or, for a password or token, from [`PASSWORD_ENV`] /
//! [`TOKEN_ENV`], when the connection is made.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;

use serde::{Deserialize, Serialize};

/// Environment variable holding the password of `nats.user` (used when
/// `password_file` is not set): `WEIR_NATS_PASSWORD`.
pub const PASSWORD_ENV: &str = "WEIR_NATS_PASSWORD";

/// Environment variable holding a token (used when no other credential is
/// configured): `WEIR_NATS_TOKEN`.
pub const TOKEN_ENV: &str = "WEIR_NATS_TOKEN";

/// Most servers in a seed list: 64 (a cluster is 3 to 5 servers; a longer
/// list is a mistake).
pub const MAX_SEED_SERVERS: usize = 64;

/// `[nats.tls]`: TLS to the servers. Any field set turns TLS on (a
/// `tls://` URL does too); the server's certificate is verified against
/// the system roots plus `ca_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates that sign the servers' certificates
    /// (added to the system roots).
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with `key_file`).
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
    /// TLS-first handshake (the server's `handshake_first`): TLS starts
    /// before the server's INFO. Default `false`.
    pub first: bool,
}

impl TlsConfig {
    /// Whether any TLS setting is given.
    pub fn is_set(&self) -> bool {
        self != &Self::default()
    }

    /// Every problem (empty if valid), unprefixed.
    pub fn problems(&self) -> Vec<String> {
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => vec!["tls.cert_file needs tls.key_file".to_owned()],
            (None, Some(_)) => vec!["tls.key_file needs tls.cert_file".to_owned()],
            _ => Vec::new(),
        }
    }
}

/// A credential, read from its file or the environment (see the module
/// docs). `Debug` never shows a secret.
#[derive(Clone, Default)]
pub enum Credentials {
    /// No credential.
    #[default]
    None,
    /// User and password.
    UserPassword {
        /// The user.
        user: String,
        /// The password.
        password: String,
    },
    /// A token.
    Token(String),
    /// An nkey seed (`SU...`): the client signs the server's nonce.
    NkeySeed(String),
    /// A `.creds` file (user JWT and nkey seed), read by the client.
    CredsFile(PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            Self::UserPassword { user, .. } => write!(f, "UserPassword({user:?}, ***)"),
            Self::Token(_) => f.write_str("Token(***)"),
            Self::NkeySeed(_) => f.write_str("NkeySeed(***)"),
            Self::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// How to authenticate, encrypt and where replies go.
#[derive(Debug, Clone, Default)]
pub struct ConnectAuth {
    /// The credential.
    pub credentials: Credentials,
    /// TLS settings.
    pub tls: TlsConfig,
    /// Inbox prefix for replies (default `_INBOX`); a per-host prefix lets
    /// the server's permissions keep hosts from reading each other's replies.
    pub inbox_prefix: Option<String>,
}

/// Why the credentials could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// A secret file could not be read.
    #[error("nats.{field} {path}: {source}")]
    File {
        /// The config field.
        field: &'static str,
        /// The file.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: std::io::Error,
    },
    /// `user` is set but neither `password_file` nor the environment gives a
    /// password.
    #[error("nats.user {user:?} has no password: set nats.password_file or {PASSWORD_ENV}")]
    NoPassword {
        /// The user.
        user: String,
    },
}

fn read_secret(field: &'static str, path: &Path) -> Result<String, CredentialsError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| CredentialsError::File {
            field,
            path: path.to_owned(),
            source,
        })
}

/// The credential-bearing fields of `[nats]`, as [`super::NatsConfig`]
/// holds them.
#[derive(Debug, Clone, Copy)]
pub struct AuthFields<'a> {
    /// `user`.
    pub user: Option<&'a str>,
    /// `password_file`.
    pub password_file: Option<&'a Path>,
    /// `token_file`.
    pub token_file: Option<&'a Path>,
    /// `nkey_seed_file`.
    pub nkey_seed_file: Option<&'a Path>,
    /// `creds_file`.
    pub creds_file: Option<&'a Path>,
}

impl AuthFields<'_> {
    /// Every problem (empty if valid), unprefixed: more than one method, a
    /// password file without a user.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let methods: Vec<&str> = [
            ("user", self.user.is_some()),
            ("token_file", self.token_file.is_some()),
            ("nkey_seed_file", self.nkey_seed_file.is_some()),
            ("creds_file", self.creds_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if methods.len() > 1 {
            p.push(format!(
                "give one way to authenticate, not {} ({})",
                methods.len(),
                methods.join(", ")
            ));
        }
        if self.password_file.is_some() && self.user.is_none() {
            p.push("password_file needs user".to_owned());
        }
        p
    }

    /// Whether any credential is configured.
    pub fn is_set(&self) -> bool {
        self.user.is_some()
            || self.password_file.is_some()
            || self.token_file.is_some()
            || self.nkey_seed_file.is_some()
            || self.creds_file.is_some()
    }

    /// Read the credential: from its file, or (a password for `user`, or a
    /// token when nothing is configured) from [`PASSWORD_ENV`] /
    /// [`TOKEN_ENV`].
    ///
    /// # Errors
    ///
    /// [`CredentialsError`] if a file cannot be read or `user` has no
    /// password.
    pub fn read(&self) -> Result<Credentials, CredentialsError> {
        if let Some(user) = self.user {
            let password = match self.password_file {
                Some(path) => read_secret("password_file", path)?,
                None => std::env::var(PASSWORD_ENV).map_err(|_| CredentialsError::NoPassword {
                    user: user.to_owned(),
                })?,
            };
            return Ok(Credentials::UserPassword {
                user: user.to_owned(),
                password,
            });
        }
        if let Some(path) = self.token_file {
            return Ok(Credentials::Token(read_secret("token_file", path)?));
        }
        if let Some(path) = self.nkey_seed_file {
            return Ok(Credentials::NkeySeed(read_secret("nkey_seed_file", path)?));
        }
        if let Some(path) = self.creds_file {
            // Checked here so the error names the field; the client reads it.
            read_secret("creds_file", path)?;
            return Ok(Credentials::CredsFile(path.to_owned()));
        }
        Ok(std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map_or(Credentials::None, Credentials::Token))
    }
}

/// Every problem with a seed list (empty if valid), unprefixed: empty, too
/// long, or a URL the client cannot parse.
pub fn server_problems(urls: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    if urls.is_empty() {
        p.push("urls is empty (omit it and url for the embedded server)".to_owned());
    }
    if urls.len() > MAX_SEED_SERVERS {
        p.push(format!(
            "urls has {} servers, at most {MAX_SEED_SERVERS}",
            urls.len()
        ));
    }
    for url in urls {
        if let Err(e) = async_nats::ServerAddr::from_str(url) {
            p.push(format!("url {url:?}: {e}"));
        }
    }
    p
}

/// async-nats options for `auth`.
///
/// # Errors
///
/// A `creds_file` the client cannot read or parse.
pub(super) async fn options(auth: ConnectAuth) -> std::io::Result<async_nats::ConnectOptions> {
    let mut options = async_nats::ConnectOptions::new();
    options = match auth.credentials {
        Credentials::None => options,
        Credentials::UserPassword { user, password } => options.user_and_password(user, password),
        Credentials::Token(token) => options.token(token),
        Credentials::NkeySeed(seed) => options.nkey(seed),
        Credentials::CredsFile(path) => options.credentials_file(path).await?,
    };
    let tls = auth.tls;
    if tls.is_set() {
        options = options.require_tls(true);
    }
    if let Some(ca) = tls.ca_file {
        options = options.add_root_certificates(ca);
    }
    if let (Some(cert), Some(key)) = (tls.cert_file, tls.key_file) {
        options = options.add_client_certificate(cert, key);
    }
    if tls.first {
        options = options.tls_first();
    }
    if let Some(prefix) = auth.inbox_prefix {
        options = options.custom_inbox_prefix(prefix);
    }
    Ok(options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> AuthFields<'static> {
        AuthFields {
            user: None,
            password_file: None,
            token_file: None,
            nkey_seed_file: None,
            creds_file: None,
        }
    }

    #[test]
    fn two_methods_or_a_lone_password_are_problems() {
        let two = AuthFields {
            user: Some("u"),
            creds_file: Some(Path::new("x.creds")),
            ..fields()
        };
        assert_eq!(
            two.problems(),
            ["give one way to authenticate, not 2 (user, creds_file)"]
        );
        let lone = AuthFields {
            password_file: Some(Path::new("pw")),
            ..fields()
        };
        assert_eq!(lone.problems(), ["password_file needs user"]);
        assert!(fields().problems().is_empty());
    }

    #[test]
    fn secrets_are_read_from_files_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let c = AuthFields {
            user: Some("node1"),
            password_file: Some(&pw),
            ..fields()
        }
        .read()
        .unwrap();
        assert!(matches!(&c, Credentials::UserPassword { password, .. } if password == "s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        let missing = AuthFields {
            nkey_seed_file: Some(Path::new("/nonexistent/seed")),
            ..fields()
        }
        .read()
        .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("nats.nkey_seed_file /nonexistent/seed"),
            "{missing}"
        );
    }

    #[test]
    fn seed_lists_are_checked_url_by_url() {
        assert!(server_problems(&["nats://a:4222".into(), "tls://b:4222".into()]).is_empty());
        assert_eq!(server_problems(&[]).len(), 1);
        let bad = server_problems(&["nats://a:4222,nats://b:4222".into()]);
        assert_eq!(bad.len(), 1, "{bad:?}");
    }

    #[test]
    fn tls_cert_needs_key() {
        let t = TlsConfig {
            cert_file: Some("c.pem".into()),
            ..Default::default()
        };
        assert_eq!(t.problems(), ["tls.cert_file needs tls.key_file"]);
        assert!(t.is_set());
        assert!(!TlsConfig::default().is_set());
    }
}
