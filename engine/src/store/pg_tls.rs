//! How Tally connects to PostgreSQL: the URL's settings, and TLS from its `sslmode`.
//!
//! `sslmode=require` (or `verify-ca` / `verify-full`, read as require) encrypts and verifies the server's
//! certificate — against the PEM file named by `sslrootcert`, or else the system's roots — with rustls,
//! the TLS stack the gRPC edge uses. `prefer` (the default) and `disable` connect in plaintext: libpq's
//! `prefer` encrypts without checking who answers, which protects against nobody who can intercept.
//! The log, the snapshot store and the reporting read model all connect through here.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A connection's settings and its TLS connector.
#[derive(Clone)]
pub struct PgConnection {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl std::fmt::Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection").field("ssl_mode", &self.config.get_ssl_mode()).finish_non_exhaustive()
    }
}

/// Reads a `postgres://…` URL or a `host=… user=…` string, with `sslrootcert` (which tokio-postgres does
/// not know) taken out and the verifying modes read as `require`.
pub fn pg_connection(url: &str) -> Result<PgConnection, String> {
    let (rest, root_cert) = take_root_cert(url);
    let mut config: tokio_postgres::Config = rest.parse().map_err(|e| format!("invalid postgres url: {e}"))?;
    let verify = config.get_ssl_mode() == SslMode::Require;
    if !verify {
        config.ssl_mode(SslMode::Disable);
    }
    let mut roots = rustls::RootCertStore::empty();
    if verify {
        match &root_cert {
            Some(path) => {
                let certs = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read sslrootcert {path}: {e}"))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    roots.add(cert).map_err(|e| format!("sslrootcert {path}: {e}"))?;
                }
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                roots.add_parsable_certificates(found.certs);
            }
        }
        if roots.is_empty() {
            return Err("sslmode=require: no root certificate to verify the server with (set sslrootcert=FILE)".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(PgConnection { config, tls: MakeRustlsConnect::new(client) })
}

/// `url` without its `sslrootcert` setting and with `verify-ca`/`verify-full` read as `require`; the
/// setting's value.
fn take_root_cert(url: &str) -> (String, Option<String>) {
    let mut root_cert = None;
    // One setting as written (`key=value`): dropped if it is `sslrootcert`, rewritten if a verifying mode.
    let mut keep = |pair: &str| match pair.split_once('=') {
        Some(("sslrootcert", value)) => {
            root_cert = Some(value.to_owned());
            None
        }
        Some(("sslmode", "verify-ca" | "verify-full")) => Some("sslmode=require".to_owned()),
        _ => Some(pair.to_owned()),
    };
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let rest = match url.split_once('?').filter(|_| is_url) {
        Some((base, query)) => {
            let kept: Vec<String> = query.split('&').filter_map(&mut keep).collect();
            if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) }
        }
        None if is_url => url.to_owned(),
        None => url.split_whitespace().filter_map(&mut keep).collect::<Vec<_>>().join(" "),
    };
    (rest, root_cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslrootcert_is_ours_and_verifying_modes_mean_require() {
        assert_eq!(
            take_root_cert("postgres://u@db/tally?sslmode=verify-full&sslrootcert=/etc/ca.pem&application_name=x"),
            ("postgres://u@db/tally?sslmode=require&application_name=x".to_owned(), Some("/etc/ca.pem".to_owned()))
        );
        assert_eq!(
            take_root_cert("postgres://u@db/tally?sslrootcert=/ca.pem"),
            ("postgres://u@db/tally".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(
            take_root_cert("host=db user=u sslmode=verify-ca sslrootcert=/ca.pem"),
            ("host=db user=u sslmode=require".to_owned(), Some("/ca.pem".to_owned()))
        );
        assert_eq!(take_root_cert("host=/var/run/postgresql user=root"), ("host=/var/run/postgresql user=root".to_owned(), None));
    }

    #[test]
    fn only_require_encrypts_and_a_missing_root_file_is_an_error() {
        assert_eq!(pg_connection("host=db user=u").unwrap().config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(pg_connection("host=db user=u sslmode=prefer").unwrap().config.get_ssl_mode(), SslMode::Disable);
        let err = pg_connection("host=db user=u sslmode=require sslrootcert=/nonexistent/ca.pem").unwrap_err();
        assert!(err.contains("cannot read sslrootcert /nonexistent/ca.pem"), "{err}");
    }
}
