//! Where the broker is: `mqtt://[USER[:PASSWORD]@]HOST[:PORT]` (port 1883 by default), or
//! `mqtts://` (TLS, port 8883; feature `mqtt-tls`), and the client options every faceage client
//! uses.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::MqttOptions;

#[derive(Clone, PartialEq, Eq)]
pub struct Broker {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    /// `mqtts://`: the broker's certificate is checked against `ca` (PEM), or against the
    /// system's roots without one, and must name `host`.
    pub tls: bool,
    pub ca: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// The broker as messages name it: never with its password.
impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Broker {
    pub fn parse(url: &str) -> Result<Broker> {
        let (rest, tls) = match (url.strip_prefix("mqtt://"), url.strip_prefix("mqtts://")) {
            (Some(rest), _) => (rest, false),
            (_, Some(_)) if !cfg!(feature = "mqtt-tls") => bail!(
                "{url}: TLS (mqtts://) is not in this build (feature mqtt-tls); use mqtt:// on a trusted network"
            ),
            (_, Some(rest)) => (rest, true),
            _ => bail!("{url}: expected mqtt://[USER[:PASSWORD]@]HOST[:PORT] or mqtts://"),
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
            _ => (address, if tls { 8883 } else { 1883 }),
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
        Ok(Broker {
            host: host.trim_matches(['[', ']']).to_string(),
            port,
            username,
            password,
            tls,
            ca: None,
        })
    }

    /// Checks the broker's certificate against the CA certificates in `ca` (PEM).
    pub fn with_ca(mut self, ca: Option<std::path::PathBuf>) -> Result<Broker> {
        if ca.is_some() && !self.tls {
            bail!("--mqtt-ca is for mqtts:// brokers; {self} is plain MQTT");
        }
        self.ca = ca;
        Ok(self)
    }

    /// A persistent session under `client_id`: the broker keeps what was sent to it (and, for a
    /// collector, what it has not yet delivered) across reconnects.
    pub fn options(&self, client_id: &str) -> Result<MqttOptions> {
        let mut options = MqttOptions::new(client_id, &self.host, self.port);
        options.set_keep_alive(Duration::from_secs(15));
        options.set_clean_session(false);
        if let Some(user) = &self.username {
            options.set_credentials(user, self.password.clone().unwrap_or_default());
        }
        #[cfg(feature = "mqtt-tls")]
        if self.tls {
            options.set_transport(self.tls_transport()?);
        }
        Ok(options)
    }

    #[cfg(feature = "mqtt-tls")]
    fn tls_transport(&self) -> Result<rumqttc::Transport> {
        // One crypto provider for the process (ring: pure Rust and assembly, no C library).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = match &self.ca {
            Some(path) => {
                let ca = std::fs::read(path)
                    .with_context(|| format!("{}: cannot read the CA certificates", path.display()))?;
                anyhow::ensure!(
                    String::from_utf8_lossy(&ca).contains("-----BEGIN CERTIFICATE-----"),
                    "{}: no PEM certificate in it",
                    path.display()
                );
                rumqttc::TlsConfiguration::Simple { ca, alpn: None, client_auth: None }
            }
            None => rumqttc::TlsConfiguration::default(),
        };
        Ok(rumqttc::Transport::tls_with_config(config))
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
        #[cfg(feature = "mqtt-tls")]
        ConnectionError::Tls(e) => format!("TLS: {e}"),
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
        if cfg!(feature = "mqtt-tls") {
            let tls = Broker::parse("mqtts://broker.example").unwrap();
            assert_eq!((tls.port, tls.to_string().as_str()), (8883, "mqtts://broker.example:8883"));
        } else {
            assert!(Broker::parse("mqtts://x").unwrap_err().to_string().contains("not in this build"));
        }
        assert!(Broker::parse("mqtt://x").unwrap().with_ca(Some("ca.pem".into())).is_err());
        assert!(Broker::parse("mqtt://x:port").unwrap_err().to_string().contains("not a number"));
    }
}
