//! Where the broker is: `mqtt://[USER[:PASSWORD]@]HOST[:PORT]` (port 1883 by default), and the
//! client options every faceage client uses.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::MqttOptions;

#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// The broker as messages name it: never with its password.
impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

impl Broker {
    pub fn parse(url: &str) -> Result<Broker> {
        let Some(rest) = url.strip_prefix("mqtt://") else {
            if url.starts_with("mqtts://") {
                bail!("{url}: TLS (mqtts://) is not in this build; use mqtt:// on a trusted network");
            }
            bail!("{url}: expected mqtt://[USER[:PASSWORD]@]HOST[:PORT]");
        };
        let rest = rest.trim_end_matches('/');
        let (credentials, address) = match rest.rsplit_once('@') {
            Some((c, a)) => (Some(c), a),
            None => (None, rest),
        };
        let (host, port) = match address.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || address.starts_with('[') => {
                (h, p.parse::<u16>().with_context(|| format!("{url}: port {p:?} is not a number"))?)
            }
            _ => (address, 1883),
        };
        if host.is_empty() {
            bail!("{url}: no host");
        }
        let (username, password) = match credentials {
            Some(c) => match c.split_once(':') {
                Some((u, p)) => (Some(u.to_string()), Some(p.to_string())),
                None => (Some(c.to_string()), None),
            },
            None => (None, None),
        };
        Ok(Broker { host: host.trim_matches(['[', ']']).to_string(), port, username, password })
    }

    /// A persistent session under `client_id`: the broker keeps what was sent to it (and, for a
    /// collector, what it has not yet delivered) across reconnects.
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(false);
        if let Some(user) = &self.username {
            options.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        options
    }
}

/// A connection error as a user reads it: what the broker said, with the broker named.
pub fn explain(broker: &Broker, error: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    let why = match error {
        ConnectionError::ConnectionRefused(ConnectReturnCode::BadUserNamePassword) => {
            "wrong user name or password".to_string()
        }
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized) => {
            "not authorised (user name or password)".to_string()
        }
        ConnectionError::ConnectionRefused(code) => format!("refused the connection ({code:?})"),
        ConnectionError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            "nothing listens there (connection refused)".to_string()
        }
        other => other.to_string(),
    };
    format!("broker {broker}: {why}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_credentials_and_messages_never_show_the_password() {
        let b = Broker::parse("mqtt://board:s3cret@broker.local:8883").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker.local", 8883));
        assert_eq!((b.username.as_deref(), b.password.as_deref()), (Some("board"), Some("s3cret")));
        assert_eq!(b.to_string(), "mqtt://broker.local:8883");
        assert!(!format!("{b:?}").contains("s3cret"));
        assert_eq!(Broker::parse("mqtt://10.0.0.2").unwrap().port, 1883);
        assert!(Broker::parse("http://x").unwrap_err().to_string().contains("expected mqtt://"));
        assert!(Broker::parse("mqtts://x").unwrap_err().to_string().contains("TLS"));
        assert!(Broker::parse("mqtt://x:port").unwrap_err().to_string().contains("not a number"));
    }
}
