//! NS8's Redis event channels and the weir subjects they map to.
//!
//! NS8 publishes each event on one of three channel shapes (NS8's
//! `agent/README.md`, "Events"; the corpus in `examples/ns8/` records them):
//!
//! | channel                         | weir source        |
//! |---------------------------------|--------------------|
//! | `cluster/event/<name>`          | `cluster`          |
//! | `node/<id>/event/<name>`        | `node/<id>`        |
//! | `module/<id>/event/<name>`      | `module/<id>`      |
//!
//! The event is published on `<prefix>.events.<name>.<source>` (source
//! segments as subject tokens). The source always comes from the channel,
//! never from the payload: Redis ACLs decide who may publish on a channel,
//! anyone can write anything in a payload.

use weir_edge::nats::subjects::{SubjectError, check_token};

/// The Redis patterns the bridge subscribes to (`PSUBSCRIBE`), one per
/// channel shape. Redis's `*` also matches `/`, so [`map_channel`] checks
/// the shape of every message's channel.
pub const PATTERNS: [&str; 3] = ["cluster/event/*", "node/*/event/*", "module/*/event/*"];

/// Why a channel cannot be published as a weir event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Not one of the three shapes.
    #[error(
        "channel {0:?} is not cluster/event/<name>, node/<id>/event/<name> or module/<id>/event/<name>"
    )]
    Shape(String),
    /// The shape is right but a part is not a valid subject token.
    #[error("channel {channel:?}: {source}")]
    Token {
        /// The channel.
        channel: String,
        /// Which part, and why.
        source: SubjectError,
    },
}

/// The event a channel carries: `(name, source)`.
///
/// # Errors
///
/// [`ChannelError::Shape`] for any other channel, [`ChannelError::Token`]
/// if the name or the id is not a subject token (empty, or holding `.`,
/// `*`, `>` or whitespace).
pub fn map_channel(channel: &str) -> Result<(String, String), ChannelError> {
    let parts: Vec<&str> = channel.split('/').collect();
    let (name, source) = match parts.as_slice() {
        ["cluster", "event", name] => (*name, "cluster".to_owned()),
        [kind @ ("node" | "module"), id, "event", name] => {
            check_token("source id", id).map_err(|source| ChannelError::Token {
                channel: channel.to_owned(),
                source,
            })?;
            (*name, format!("{kind}/{id}"))
        }
        _ => return Err(ChannelError::Shape(channel.to_owned())),
    };
    check_token("event name", name).map_err(|source| ChannelError::Token {
        channel: channel.to_owned(),
        source,
    })?;
    Ok((name.to_owned(), source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_shapes_map_to_name_and_source() {
        assert_eq!(
            map_channel("cluster/event/acl-changed").unwrap(),
            ("acl-changed".into(), "cluster".into())
        );
        assert_eq!(
            map_channel("node/4/event/vpn-changed").unwrap(),
            ("vpn-changed".into(), "node/4".into())
        );
        assert_eq!(
            map_channel("module/ldapproxy4/event/user-domain-changed").unwrap(),
            ("user-domain-changed".into(), "module/ldapproxy4".into())
        );
    }

    #[test]
    fn other_channels_are_refused_with_the_reason() {
        for bad in [
            "cluster/event",
            "cluster/event/a/b",
            "node/4/event",
            "module/x/y/event/z",
            "other/event/x",
            "module/mail1/task/x",
        ] {
            assert!(
                matches!(map_channel(bad), Err(ChannelError::Shape(_))),
                "{bad}"
            );
        }
        for bad in [
            "cluster/event/a.b",
            "cluster/event/",
            "module/a*/event/x",
            "node//event/x",
            "module/x/event/a b",
        ] {
            let e = map_channel(bad).unwrap_err();
            assert!(matches!(e, ChannelError::Token { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{e}");
        }
    }
}
