//! The API key a client sends (the CLI, `tally bench`): from `TALLY_API_KEY`, else the file named by
//! `--key-file` (`TALLY_KEY_FILE`), else `./data/platform.key`, which the first `tally serve` in the same
//! directory writes. The token is never a flag's value, so it never shows in `ps` or a shell's history.

use std::path::{Path, PathBuf};

use clap::Args;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::DATA_DIR_DEFAULT;
use crate::keys::PLATFORM_KEY_FILE;

/// The variable holding a token.
pub const API_KEY_VARIABLE: &str = "TALLY_API_KEY";

/// Where the key comes from.
#[derive(Debug, Clone, Default, Args)]
pub struct KeySource {
    /// File holding the API key (a line `tally_…`) [default: $TALLY_API_KEY if set, else
    /// ./data/platform.key, which the first `tally serve` writes]
    #[arg(long, env = "TALLY_KEY_FILE", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read the API key from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin} does not hold an API key (expected one line `tally_<16 hex>_<64 hex>`)")]
    Malformed { origin: String },
    #[error("the key in {path} is sent only to a server on this machine; for {server}, set {API_KEY_VARIABLE} or --key-file")]
    DefaultKeyOffLoopback { path: String, server: String },
}

impl KeySource {
    /// The token to send to `server`, if any is configured. The default file (the platform key the first
    /// local start wrote) goes only to a server on this machine.
    pub fn token_for(&self, server: &str) -> Result<Option<String>, CredentialError> {
        if let Ok(token) = std::env::var(API_KEY_VARIABLE) {
            return parse(&token, API_KEY_VARIABLE).map(Some);
        }
        let (path, explicit) = match &self.key_file {
            Some(path) => (path.clone(), true),
            None => (Path::new(DATA_DIR_DEFAULT).join(PLATFORM_KEY_FILE), false),
        };
        match std::fs::read_to_string(&path) {
            Ok(_) if !explicit && !is_loopback(server) => {
                Err(CredentialError::DefaultKeyOffLoopback { path: path.display().to_string(), server: server.to_owned() })
            }
            Ok(text) => parse(&text, &path.display().to_string()).map(Some),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound && !explicit => Ok(None),
            Err(source) => Err(CredentialError::Read { path, source }),
        }
    }

    /// The interceptor sending the key configured for `server`.
    pub fn bearer_for(&self, server: &str) -> Result<Bearer, CredentialError> {
        Ok(Bearer::new(self.token_for(server)?.as_deref()))
    }
}

/// Whether `server` (a URL) is on this machine.
fn is_loopback(server: &str) -> bool {
    let Ok(uri) = server.parse::<tonic::codegen::http::Uri>() else { return false };
    let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn parse(text: &str, origin: &str) -> Result<String, CredentialError> {
    let token = text.trim();
    match tally_engine::domain::access::token_parts(token) {
        Some(_) => Ok(token.to_owned()),
        None => Err(CredentialError::Malformed { origin: origin.to_owned() }),
    }
}

/// Adds `authorization: Bearer <token>` to every call (nothing without a token). Its `Debug` never shows
/// the token.
#[derive(Clone, Default)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<redacted>)" } else { "Bearer(none)" })
    }
}

impl Bearer {
    pub fn new(token: Option<&str>) -> Self {
        Self(token.and_then(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>().ok()).map(|mut value| {
            value.set_sensitive(true);
            value
        }))
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A channel that sends a key with every call.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Connects to `server`, sending `bearer`'s key with every call.
pub async fn connect(server: &str, bearer: Bearer) -> Result<Authed, tonic::transport::Error> {
    let channel = tonic::transport::Endpoint::from_shared(server.to_owned())?.tcp_nodelay(true).connect().await?;
    Ok(InterceptedService::new(channel, bearer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_key_stays_on_this_machine() {
        for local in ["http://127.0.0.1:50051", "https://localhost:1", "http://[::1]:50051", "http://127.8.0.1"] {
            assert!(is_loopback(local), "{local}");
        }
        for remote in ["http://10.0.0.1:50051", "https://tally.example.com", "http://localhost.example.com", "not a url"] {
            assert!(!is_loopback(remote), "{remote}");
        }
        assert_eq!(format!("{:?}", Bearer::new(Some("tally_secret"))), "Bearer(<redacted>)");
    }
}
