//! Transport security and credentials of both connections: MySQL/MariaDB and Elasticsearch.
//!
//! Contract:
//! * [`mysql_opts`] turns `[source]` settings into connection options: the password from
//!   `password_env`/`password_file` replaces the URL's, and the TLS mode maps to rustls
//!   settings exactly as MySQL's `--ssl-mode` names suggest. With a `ca_file` only that CA is
//!   trusted (the public roots are dropped), so a certificate from another CA fails.
//! * [`es_transport`] adds `[sink]` credentials as a sensitive `Authorization` header (it never
//!   shows in `Debug` output), the CA and the client certificate. Certificates and host names
//!   are always verified for `https://`; there is deliberately no switch to turn that off, and
//!   no fingerprint pinning either (the client cannot pin without disabling verification).
//! * A certificate that does not verify is never retried and never downgraded: [`tls_problem`]
//!   recognises it in an error chain so callers fail with a message naming the fix. Only mode
//!   `preferred` falls back to plaintext, and only when the server offers no TLS at all.

use elasticsearch::auth::{ClientCertificate, Credentials};
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderValue, AUTHORIZATION};
use elasticsearch::http::transport::TransportBuilder;
use mysql_async::{ClientIdentity, Opts, OptsBuilder, SslOpts};

use crate::config::{SinkConfig, SourceTls, TlsMode};
use crate::secret::Secret;

/// Connection options for `url` with `password` (if any) and `tls` applied. `plaintext`
/// forces no TLS (the `preferred` fallback).
pub fn mysql_opts(
    url: &str,
    password: Option<&Secret>,
    tls: &SourceTls,
    plaintext: bool,
) -> Result<Opts, mysql_async::UrlError> {
    let opts = Opts::from_url(url)?;
    let mut builder = OptsBuilder::from_opts(opts);
    if let Some(p) = password {
        builder = builder.pass(Some(p.expose().to_string()));
    }
    let ssl = match tls.mode {
        _ if plaintext => None,
        TlsMode::Disabled => None,
        TlsMode::Preferred | TlsMode::Required => Some(
            SslOpts::default()
                .with_danger_accept_invalid_certs(true)
                .with_danger_skip_domain_validation(true),
        ),
        TlsMode::VerifyCa | TlsMode::VerifyIdentity => {
            let mut ssl = SslOpts::default().with_danger_skip_domain_validation(tls.mode == TlsMode::VerifyCa);
            if let Some(ca) = &tls.ca_file {
                ssl = ssl
                    .with_root_certs(vec![ca.clone().into()])
                    .with_disable_built_in_roots(true);
            }
            Some(ssl)
        }
    };
    let ssl = ssl.map(|s| match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            s.with_client_identity(Some(ClientIdentity::new(cert.clone().into(), key.clone().into())))
        }
        _ => s,
    });
    Ok(builder.ssl_opts(ssl).into())
}

/// The fix to name for a MySQL TLS failure.
pub fn mysql_fix(mode: TlsMode, problem: &str) -> &'static str {
    if problem.contains("does not have this capability") {
        return "the server does not offer TLS: give it ssl_cert/ssl_key (and ssl_ca), or set source.tls.mode = \"preferred\" to allow plaintext";
    }
    if problem.contains("NotValidForName") {
        return "the server's certificate does not name the host in source.url: connect by a name the certificate lists (subjectAltName), or reissue the certificate";
    }
    match mode {
        TlsMode::VerifyCa | TlsMode::VerifyIdentity => {
            "the server's certificate does not verify: set source.tls.ca_file to the PEM of the CA that signed it (or fix the server's ssl_cert)"
        }
        _ => "check the TLS files in [source.tls] and the server's TLS set-up",
    }
}

/// Adds `cfg`'s credentials, CA and client certificate to `builder`.
pub fn es_transport(mut builder: TransportBuilder, cfg: &SinkConfig) -> Result<TransportBuilder, String> {
    if let Some(ca) = &cfg.tls.ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("sink.tls.ca_file: cannot read {}: {e}", ca.display()))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| {
            format!(
                "sink.tls.ca_file: {} holds no usable PEM certificate: {e}",
                ca.display()
            )
        })?;
        builder = builder.cert_validation(CertificateValidation::Full(cert));
    }
    if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        let mut pem =
            std::fs::read(key).map_err(|e| format!("sink.tls.key_file: cannot read {}: {e}", key.display()))?;
        pem.push(b'\n');
        pem.extend(
            std::fs::read(cert).map_err(|e| format!("sink.tls.cert_file: cannot read {}: {e}", cert.display()))?,
        );
        // The client uses a certificate "credential" only for the TLS identity; the
        // Authorization header below still carries a password or API key if configured.
        builder = builder.auth(Credentials::Certificate(ClientCertificate::Pem(pem)));
    }
    if let Some(value) = authorization(cfg) {
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            "sink credentials contain characters not allowed in an HTTP header (check the password or API key for line breaks)"
                .to_string()
        })?;
        value.set_sensitive(true);
        builder = builder.header(AUTHORIZATION, value);
    }
    Ok(builder)
}

/// The `Authorization` header value for `cfg`'s credentials, if any.
fn authorization(cfg: &SinkConfig) -> Option<String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    if let Some(key) = &cfg.api_key {
        let key = key.expose();
        // `id:api_key` is encoded here; the `encoded` form Elasticsearch returns is used as is.
        let encoded = match key.contains(':') {
            true => b64.encode(key),
            false => key.to_string(),
        };
        return Some(format!("ApiKey {encoded}"));
    }
    let (user, password) = (cfg.username.as_ref()?, cfg.password.as_ref()?);
    Some(format!("Basic {}", b64.encode(format!("{user}:{}", password.expose()))))
}

/// The whole `source()` chain of `e`, joined by `: `.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// `Some(description)` when an error chain's text shows a TLS failure that retrying cannot
/// fix (an untrusted or misnamed certificate, a rejected client certificate, a server
/// without TLS).
pub fn tls_problem(chain: &str) -> Option<&str> {
    const MARKERS: [&str; 6] = [
        "invalid peer certificate",
        "does not have this capability",
        "CertificateRequired",
        "BadCertificate",
        "UnknownCA",
        "received fatal alert",
    ];
    MARKERS.iter().any(|m| chain.contains(m)).then_some(chain)
}

/// The fix to name for an Elasticsearch TLS failure.
pub fn es_fix(problem: &str) -> &'static str {
    if problem.contains("NotValidForName") {
        "the cluster's certificate does not name the host in sink.url: use a host name the certificate lists (subjectAltName)"
    } else if problem.contains("invalid peer certificate") {
        "the cluster's certificate does not verify: set sink.tls.ca_file to the PEM of the CA that signed it (Elasticsearch: config/certs/http_ca.crt)"
    } else {
        "the cluster refused the TLS handshake: check sink.tls.cert_file/key_file (client certificate) and the cluster's TLS settings"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(extra: &str) -> SinkConfig {
        let text = format!(
            "[source]\nurl = \"mysql://u@h:1\"\n[sink]\nurl = \"https://es:9200\"\n{extra}\n[[tables]]\nsource = 'a\\.b'\nindex = \"x\"\nmapping = \"m\"\n"
        );
        let env = vec![
            ("ES_PW".to_string(), "pw-secret".to_string()),
            ("ES_KEY".to_string(), "kid:kvalue".to_string()),
        ];
        crate::config::Config::parse(&text, "t", env).unwrap().sink
    }

    #[test]
    fn authorization_headers() {
        assert_eq!(
            authorization(&sink("username = \"elastic\"\npassword_env = \"ES_PW\"")).as_deref(),
            Some("Basic ZWxhc3RpYzpwdy1zZWNyZXQ=")
        );
        assert_eq!(
            authorization(&sink("api_key_env = \"ES_KEY\"")).as_deref(),
            Some("ApiKey a2lkOmt2YWx1ZQ==")
        );
        assert_eq!(authorization(&sink("")), None);
        let s = sink("username = \"elastic\"\npassword_env = \"ES_PW\"");
        assert!(!format!("{s:?}").contains("pw-secret"));
    }

    #[test]
    fn tls_failures_are_recognised() {
        assert!(tls_problem("Input/output error: invalid peer certificate: UnknownIssuer").is_some());
        assert!(tls_problem("Connection refused (os error 111)").is_none());
        assert!(es_fix("invalid peer certificate: UnknownIssuer").contains("sink.tls.ca_file"));
        assert!(mysql_fix(TlsMode::Required, "server does not have this capability").contains("ssl_cert"));
        assert!(mysql_fix(TlsMode::VerifyIdentity, "invalid peer certificate: UnknownIssuer").contains("ca_file"));
    }
}
