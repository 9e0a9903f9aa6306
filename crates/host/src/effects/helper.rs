//! The privileged effect helper's protocol: the host asks, a helper running
//! with the privileges the host lacks checks the request against the
//! config's grants and runs the command.
//!
//! On NS8 each module's services run under that module's own `systemd
//! --user` manager, reached only through `runagent -m <module>`, which needs
//! root. weir's host runs as an unprivileged user. Its command executor runs
//! `weir effect-request`, which writes one request line to a Unix socket.
//! systemd accepts the connection and starts `weir effect-helper` (root)
//! with the connection as its standard input and output. The helper reads
//! the request ([`Request::parse`]) and checks it against the same
//! `weir.toml`: the app must exist and must be granted that action on that
//! unit ([`Request::check`]). It then runs its own argv template
//! ([`super::substitute`]) with a clean environment, and answers `ok`
//! ([`OK_REPLY`]) or `error: <reason>` on one line.
//!
//! So a compromised host can ask for nothing the operator did not grant in
//! a file the host cannot write, and runs no command of its own choosing
//! as root.

use super::Grants;

/// Longest request line the helper reads, newline included: 512 bytes (an
/// action, an app name and a unit name).
pub const MAX_REQUEST_BYTES: usize = 512;

/// Longest answer line: 4,096 bytes.
pub const MAX_REPLY_BYTES: usize = 4_096;

/// The answer to a request that was carried out.
pub const OK_REPLY: &str = "ok";

/// One request: `<action> <app> <unit>\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `restart` or `reload`.
    pub action: String,
    /// The app (on NS8, the module id).
    pub app: String,
    /// The unit.
    pub unit: String,
}

impl Request {
    /// The request line for `action` on `unit` of `app`.
    pub fn line(action: &str, app: &str, unit: &str) -> String {
        format!("{action} {app} {unit}\n")
    }

    /// Parse one request line (at most [`MAX_REQUEST_BYTES`], UTF-8, three
    /// words separated by single spaces, ending in a newline).
    ///
    /// # Errors
    ///
    /// Why the line is refused.
    pub fn parse(line: &[u8]) -> Result<Self, String> {
        if line.len() > MAX_REQUEST_BYTES {
            return Err(format!("request over {MAX_REQUEST_BYTES} bytes"));
        }
        let text = std::str::from_utf8(line).map_err(|_| "request is not UTF-8".to_owned())?;
        let text = text
            .strip_suffix('\n')
            .ok_or_else(|| "request does not end with a newline".to_owned())?;
        let words: Vec<&str> = text.split(' ').collect();
        let [action, app, unit] = words[..] else {
            return Err(format!("request {text:?} is not \"<action> <app> <unit>\""));
        };
        if !matches!(action, "restart" | "reload") {
            return Err(format!("action {action:?} is not restart or reload"));
        }
        if app.is_empty() || unit.is_empty() || text.contains(|c: char| c.is_control()) {
            return Err(format!(
                "request {text:?} has an empty word or a control character"
            ));
        }
        Ok(Self {
            action: action.to_owned(),
            app: app.to_owned(),
            unit: unit.to_owned(),
        })
    }

    /// Whether this request is granted: `grants_of` finds the app's
    /// `[app.grants]` (`None`: no such app), and it must list the unit under
    /// `restart` or `reload`, as the action says.
    ///
    /// # Errors
    ///
    /// Why it is not granted.
    pub fn check<'a>(&self, grants_of: impl Fn(&str) -> Option<&'a Grants>) -> Result<(), String> {
        let grants =
            grants_of(&self.app).ok_or_else(|| format!("no app {:?} in the config", self.app))?;
        let granted = match self.action.as_str() {
            "restart" => &grants.restart,
            _ => &grants.reload,
        };
        if granted.contains(&self.unit) {
            Ok(())
        } else {
            Err(format!(
                "app {} is not granted {} of {:?}",
                self.app, self.action, self.unit
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        assert_eq!(
            Request::parse(b"restart mail1 dovecot.service\n").unwrap(),
            Request {
                action: "restart".into(),
                app: "mail1".into(),
                unit: "dovecot.service".into()
            }
        );
        for (bad, why) in [
            (&b"restart mail1 dovecot.service"[..], "newline"),
            (b"stop mail1 dovecot.service\n", "not restart or reload"),
            (b"restart mail1\n", "is not"),
            (b"restart mail1 a b\n", "is not"),
            (b"restart  a\n", "empty word"),
            (b"restart a \x01b\n", "control"),
            (b"restart a \xff\n", "UTF-8"),
        ] {
            let e = Request::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let grants = Grants {
            restart: vec!["a.service".into()],
            ..Grants::default()
        };
        let of = |app: &str| (app == "mail1").then_some(&grants);
        let req = |l: &str| Request::parse(l.as_bytes()).unwrap().check(of);
        assert_eq!(req("restart mail1 a.service\n"), Ok(()));
        assert!(
            req("reload mail1 a.service\n")
                .unwrap_err()
                .contains("not granted reload")
        );
        assert!(
            req("restart mail1 b.service\n")
                .unwrap_err()
                .contains("not granted")
        );
        assert!(
            req("restart mail2 a.service\n")
                .unwrap_err()
                .contains("no app")
        );
        let long = format!("restart a {}\n", "u".repeat(MAX_REQUEST_BYTES));
        assert!(
            Request::parse(long.as_bytes())
                .unwrap_err()
                .contains("over")
        );
        assert_eq!(
            Request::parse(Request::line("reload", "a", "b").as_bytes())
                .unwrap()
                .unit,
            "b"
        );
    }
}
