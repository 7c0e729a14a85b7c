//! Broker addresses as operators write them: `mqtt://[user[:password]@]host[:port]` or
//! `mqtts://…` (TLS), parsed at the boundary into the transport's [`BrokerConfig`].

use std::path::Path;

use fleetops_transport_mqtt::{BrokerConfig, Credentials, TlsConfig};

/// Why a broker URL or its TLS material was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BrokerUrlError {
    /// Neither `mqtt://` nor `mqtts://`.
    #[error("broker URL `{0}` must start with mqtt:// or mqtts://")]
    Scheme(String),
    /// No host between the scheme and the port.
    #[error("broker URL `{0}` has no host")]
    NoHost(String),
    /// A port that is not a number from 1 to 65535.
    #[error("broker URL `{url}` has an invalid port `{port}`")]
    Port {
        /// The URL as given (password removed).
        url: String,
        /// The port text.
        port: String,
    },
    /// A path, query or fragment: MQTT brokers have none.
    #[error("broker URL `{0}` must not have a path, query or fragment")]
    Path(String),
    /// `mqtts://` without a CA file to check the broker's certificate against.
    #[error("mqtts:// needs a CA certificate file (--broker-ca)")]
    NoCa,
    /// A TLS file that could not be read.
    #[error("cannot read {what} `{path}`: {reason}")]
    File {
        /// Which file (CA, client certificate, client key).
        what: &'static str,
        /// Its path.
        path: String,
        /// The I/O error.
        reason: String,
    },
}

/// Parsed pieces of a broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Whether the scheme was `mqtts`.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port (1883 for mqtt, 8883 for mqtts when absent).
    pub port: u16,
    /// Credentials from the user-info part, if any.
    pub credentials: Option<Credentials>,
}

/// The URL with any password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user_info = &url[s + 3..at];
            match user_info.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..s + 3], user, &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl BrokerUrl {
    /// Parses `mqtt://[user[:password]@]host[:port]` or `mqtts://…`.
    pub fn parse(url: &str) -> Result<Self, BrokerUrlError> {
        let shown = redact(url);
        let (tls, rest) = if let Some(r) = url.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = url.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(BrokerUrlError::Scheme(shown));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#']) {
            return Err(BrokerUrlError::Path(shown));
        }
        let (user_info, host_port) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let credentials = user_info.map(|u| {
            let (user, pass) = u.split_once(':').unwrap_or((u, ""));
            Credentials {
                username: user.to_string(),
                password: pass.to_string(),
            }
        });
        let default_port = if tls { 8883 } else { 1883 };
        let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
            // [::1]:1883
            let (h, after) = v6
                .split_once(']')
                .ok_or(BrokerUrlError::NoHost(shown.clone()))?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(BrokerUrlError::NoHost(shown)),
            }
        } else {
            match host_port.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (host_port, None),
            }
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(shown));
        }
        let port = match port {
            None => default_port,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => {
                    return Err(BrokerUrlError::Port {
                        url: shown,
                        port: p.to_string(),
                    })
                }
            },
        };
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            credentials,
        })
    }

    /// The transport's connection settings. `mqtts` needs `ca` (PEM); a client certificate
    /// and key (PEM) are optional. Credentials given separately replace those of the URL.
    pub fn to_config(
        &self,
        ca: Option<&Path>,
        client_cert: Option<(&Path, &Path)>,
        credentials: Option<Credentials>,
    ) -> Result<BrokerConfig, BrokerUrlError> {
        let mut config = BrokerConfig::new(self.host.clone(), self.port);
        config.credentials = credentials.or_else(|| self.credentials.clone());
        if self.tls {
            let ca = ca.ok_or(BrokerUrlError::NoCa)?;
            let ca_pem = read("CA certificate", ca)?;
            let client_auth_pem = match client_cert {
                Some((cert, key)) => {
                    Some((read("client certificate", cert)?, read("client key", key)?))
                }
                None => None,
            };
            config.tls = Some(TlsConfig {
                ca_pem,
                client_auth_pem,
            });
        }
        Ok(config)
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, BrokerUrlError> {
    std::fs::read(path).map_err(|e| BrokerUrlError::File {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_tls_credentials_and_ipv6() {
        let u = BrokerUrl::parse("mqtt://127.0.0.1:18830").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (false, "127.0.0.1", 18830)
        );
        assert!(u.credentials.is_none());
        let u = BrokerUrl::parse("mqtts://svc:s3cr:et@broker.local").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port),
            (true, "broker.local", 8883)
        );
        let c = u.credentials.unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("svc", "s3cr:et")
        );
        let u = BrokerUrl::parse("mqtt://[::1]:1884/").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        assert_eq!(BrokerUrl::parse("mqtt://h").unwrap().port, 1883);
    }

    #[test]
    fn refuses_bad_urls_without_leaking_the_password() {
        assert!(matches!(
            BrokerUrl::parse("tcp://h:1"),
            Err(BrokerUrlError::Scheme(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://:1883"),
            Err(BrokerUrlError::NoHost(_))
        ));
        assert!(matches!(
            BrokerUrl::parse("mqtt://h/x"),
            Err(BrokerUrlError::Path(_))
        ));
        for bad in ["mqtt://h:0", "mqtt://h:70000", "mqtt://h:x"] {
            assert!(
                matches!(BrokerUrl::parse(bad), Err(BrokerUrlError::Port { .. })),
                "{bad}"
            );
        }
        let e = BrokerUrl::parse("mqtt://u:hunter2@h:x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        assert!(e.contains("u:***@h:x"), "{e}");
    }

    #[test]
    fn tls_needs_a_readable_ca() {
        let u = BrokerUrl::parse("mqtts://h").unwrap();
        assert_eq!(u.to_config(None, None, None), Err(BrokerUrlError::NoCa));
        let e = u
            .to_config(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err();
        assert!(matches!(
            e,
            BrokerUrlError::File {
                what: "CA certificate",
                ..
            }
        ));
        let c = BrokerUrl::parse("mqtt://a:b@h")
            .unwrap()
            .to_config(None, None, None)
            .unwrap();
        assert_eq!(c.credentials.unwrap().username, "a");
    }
}
