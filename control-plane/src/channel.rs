//! Security of the filter channel, the gRPC port the filters' `FilterSync` streams reach:
//! the filter token every stream must present, and TLS (optionally mutual) for the port.
//!
//! The channel carries every provider key and accepts usage records, so a stream without the
//! token, or with a wrong one, is refused before it receives anything. The token is not the
//! master key: filters hold it on every Envoy, admins should not have to hand theirs out.
//! The management service on the same port keeps its own master-key authentication.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// gRPC metadata key of the filter token (the filter sends the same key, see
/// `tollgate_core::channel::FILTER_TOKEN_METADATA`).
pub const FILTER_TOKEN_METADATA: &str = "x-tollgate-filter-token";

/// Environment variable of the token, for the control plane and for Envoy's process (the
/// rendered configs name it; the filter reads it there).
pub const FILTER_TOKEN_ENV: &str = "TOLLGATE_FILTER_TOKEN";

/// Shortest token accepted: a guessable token would protect nothing.
pub const MIN_FILTER_TOKEN_LEN: usize = 16;

/// The shared secret filters present. `Debug` never shows it; only [`FilterToken::expose`]
/// does, for handing it to Envoy's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct FilterToken(String);

impl std::fmt::Debug for FilterToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FilterToken(***)")
    }
}

impl FilterToken {
    /// A token from configuration; surrounding whitespace (a file's final newline) is
    /// dropped. It must be at least [`MIN_FILTER_TOKEN_LEN`] visible ASCII characters, since
    /// it travels as a gRPC metadata value.
    pub fn new(text: &str) -> Result<FilterToken, ChannelError> {
        let token = text.trim();
        if !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(ChannelError::TokenNotHeaderSafe);
        }
        if token.len() < MIN_FILTER_TOKEN_LEN {
            return Err(ChannelError::TokenTooShort {
                min: MIN_FILTER_TOKEN_LEN,
            });
        }
        Ok(FilterToken(token.to_string()))
    }

    /// A token read from `path`.
    pub fn from_file(path: &Path) -> Result<FilterToken, ChannelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ChannelError::Read {
            what: "the filter token file",
            path: path.to_path_buf(),
            source,
        })?;
        FilterToken::new(&text)
    }

    /// A new random token (256 bits, hex), for `tollgate up`.
    pub fn generate() -> Result<FilterToken, ChannelError> {
        let mut bytes = [0u8; 32];
        getrandom::getrandom(&mut bytes).map_err(|error| ChannelError::NoRandomness {
            reason: error.to_string(),
        })?;
        Ok(FilterToken(hex::encode(bytes)))
    }

    /// The token itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.as_bytes()).into()
    }
}

/// Files of the port's TLS: the server's certificate chain and key, and for mutual TLS the
/// CA client certificates must chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA bundle for client certificates; set, every client must present one.
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsFiles {
    /// Reads the files and checks that rustls accepts them, so a bad file stops the control
    /// plane at start, not at its first connection.
    pub fn load(&self) -> Result<ServerTlsConfig, ChannelError> {
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|source| ChannelError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
            read("the TLS certificate", &self.cert)?,
            read("the TLS key", &self.key)?,
        ));
        if let Some(client_ca) = &self.client_ca {
            config =
                config.client_ca_root(Certificate::from_pem(read("the client CA", client_ca)?));
        }
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|error| ChannelError::Tls {
                reason: crate::server::error_chain(&error),
            })?;
        Ok(config)
    }
}

/// How the gRPC port protects the filter channel.
#[derive(Debug, Clone, Default)]
pub struct ChannelSecurity {
    /// The token every `FilterSync` stream must present; `None` accepts every stream
    /// (loopback only, see [`ChannelSecurity::check_exposure`]).
    pub filter_token: Option<FilterToken>,
    /// TLS for the whole port (filters and the management service).
    pub tls: Option<ServerTlsConfig>,
}

impl ChannelSecurity {
    /// Refuses to serve the channel beyond this machine without a token: anyone reaching
    /// the port would receive every provider key. Without TLS off loopback, warns that the
    /// keys travel in clear.
    pub fn check_exposure(&self, address: SocketAddr) -> Result<(), ChannelError> {
        let loopback = address.ip().is_loopback();
        match (&self.filter_token, loopback) {
            (None, false) => return Err(ChannelError::TokenRequired { address }),
            (None, true) => tracing::warn!(
                "filter streams are not authenticated: set {FILTER_TOKEN_ENV} (or \
                 --filter-token-file) so that only filters holding the token get the provider keys"
            ),
            (Some(_), _) => {}
        }
        if self.tls.is_none() && !loopback {
            tracing::warn!(
                %address,
                "the filter channel is not encrypted: provider keys travel in clear \
                 (--grpc-tls-cert/--grpc-tls-key serve TLS)"
            );
        }
        Ok(())
    }
}

/// Checks the filter token of each `FilterSync` stream before it is accepted. The digests
/// of the tokens are compared, in constant time, so neither the comparison's timing nor a
/// memory dump of this check reveals the token.
#[derive(Clone)]
pub struct FilterAuth {
    expected: Option<[u8; 32]>,
}

impl FilterAuth {
    /// A check against `token`; `None` lets every stream in.
    pub fn new(token: Option<&FilterToken>) -> FilterAuth {
        FilterAuth {
            expected: token.map(FilterToken::digest),
        }
    }

    fn refuse(request: &Request<()>, why: &str) -> Status {
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |peer| peer.to_string());
        tracing::warn!(
            "refused a filter stream from {peer}: {why} ({FILTER_TOKEN_METADATA}); check \
             {FILTER_TOKEN_ENV} in Envoy's environment"
        );
        Status::unauthenticated(format!("filter stream refused: {why}"))
    }
}

impl Interceptor for FilterAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let Some(presented) = request.metadata().get(FILTER_TOKEN_METADATA) else {
            return Err(Self::refuse(&request, "no filter token"));
        };
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let difference = presented
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (left, right)| acc | (left ^ right));
        if difference == 0 {
            Ok(request)
        } else {
            Err(Self::refuse(&request, "wrong filter token"))
        }
    }
}

/// Why the channel's security could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// The token is too short.
    #[error("the filter token must be at least {min} characters long")]
    TokenTooShort {
        /// The minimum.
        min: usize,
    },
    /// The token holds a character a gRPC metadata value cannot carry.
    #[error("the filter token may only hold visible ASCII characters (no spaces)")]
    TokenNotHeaderSafe,
    /// A file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// rustls refused the certificate or key.
    #[error("the gRPC TLS certificate or key is unusable: {reason}")]
    Tls {
        /// rustls' reason.
        reason: String,
    },
    /// No token on an address beyond this machine.
    #[error(
        "the filter channel on {address} is reachable from other machines, so it needs a \
         filter token: set {FILTER_TOKEN_ENV} or --filter-token-file (and give Envoy the same \
         {FILTER_TOKEN_ENV})"
    )]
    TokenRequired {
        /// The gRPC address.
        address: SocketAddr,
    },
    /// The OS gave no random bytes.
    #[error("cannot generate a filter token: {reason}")]
    NoRandomness {
        /// The OS error.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert(FILTER_TOKEN_METADATA, token.parse().unwrap());
        }
        request
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let token = FilterToken::new(" a-long-enough-token\n").unwrap();
        assert_eq!(token.expose(), "a-long-enough-token");
        assert_eq!(format!("{token:?}"), "FilterToken(***)");
        let security = ChannelSecurity {
            filter_token: Some(token.clone()),
            tls: None,
        };
        assert!(!format!("{security:?}").contains("a-long-enough-token"));

        let mut auth = FilterAuth::new(Some(&token));
        assert!(auth.call(request(Some("a-long-enough-token"))).is_ok());
        let missing = auth.call(request(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert_eq!(missing.message(), "filter stream refused: no filter token");
        let wrong = auth.call(request(Some("a-long-enough-tokeN"))).unwrap_err();
        assert_eq!(wrong.message(), "filter stream refused: wrong filter token");
        // Without a configured token every stream is let in.
        assert!(FilterAuth::new(None).call(request(None)).is_ok());
    }

    #[test]
    fn weak_or_unsendable_tokens_are_refused() {
        assert!(matches!(
            FilterToken::new("short"),
            Err(ChannelError::TokenTooShort { min: 16 })
        ));
        assert!(matches!(
            FilterToken::new("sixteen chars with spaces"),
            Err(ChannelError::TokenNotHeaderSafe)
        ));
        let generated = FilterToken::generate().unwrap();
        assert_eq!(generated.expose().len(), 64);
        assert_ne!(generated, FilterToken::generate().unwrap());
    }

    #[test]
    fn no_token_only_on_loopback() {
        let open = ChannelSecurity::default();
        assert!(open
            .check_exposure("127.0.0.1:50051".parse().unwrap())
            .is_ok());
        assert!(open.check_exposure("[::1]:50051".parse().unwrap()).is_ok());
        let error = open
            .check_exposure("0.0.0.0:50051".parse().unwrap())
            .unwrap_err();
        assert!(matches!(error, ChannelError::TokenRequired { .. }));
        assert!(error.to_string().contains("TOLLGATE_FILTER_TOKEN"));
        let guarded = ChannelSecurity {
            filter_token: Some(FilterToken::generate().unwrap()),
            tls: None,
        };
        assert!(guarded
            .check_exposure("0.0.0.0:50051".parse().unwrap())
            .is_ok());
    }
}
