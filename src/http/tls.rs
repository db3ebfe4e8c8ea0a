//! TLS material: the CA bundle that replaces the built-in roots, and the client identity for mTLS.
//!
//! `SCALR_AGENT_CA_CERT` is either a path to a PEM file or the PEM itself, base64-encoded (how Scalr's
//! charts pass it). Loading is done once at start-up; errors say which input was wrong and how.

use base64::Engine;

/// Where the CA bundle comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaSource {
    /// A PEM file on disk.
    File(std::path::PathBuf),
    /// PEM bytes (already decoded from base64, or given inline).
    Pem(Vec<u8>),
}

/// A client certificate chain and its key, both PEM, for mTLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain file.
    pub cert_file: std::path::PathBuf,
    /// The private key file.
    pub key_file: std::path::PathBuf,
}

/// A client certificate chain and its key given as PEM bytes rather than files (kubeconfig
/// `client-certificate-data` / `client-key-data`). `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentityPem {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
    /// Where the bytes came from, for error messages (e.g. `kubeconfig user "ci"`).
    pub origin: String,
}

impl std::fmt::Debug for ClientIdentityPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentityPem")
            .field("origin", &self.origin)
            .field("cert_pem_bytes", &self.cert_pem.len())
            .field("key_pem", &crate::secret::MASK)
            .finish()
    }
}

/// Why TLS material could not be loaded.
#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The input held no usable PEM item of the needed kind.
    NoPem { what: &'static str, origin: String },
    /// The PEM was malformed.
    BadPem {
        what: &'static str,
        origin: String,
        detail: String,
    },
}

impl std::fmt::Display for TlsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TlsError::Read { what, path, source } => write!(
                f,
                "cannot read the {what} {}: {source}; check the path and that the file is mounted",
                path.display()
            ),
            TlsError::NoPem { what, origin } => write!(
                f,
                "the {what} from {origin} holds no PEM block of the right kind; expected \
                 '-----BEGIN CERTIFICATE-----' (or a PRIVATE KEY block for a key)"
            ),
            TlsError::BadPem {
                what,
                origin,
                detail,
            } => write!(f, "the {what} from {origin} is not valid PEM: {detail}"),
        }
    }
}

impl std::error::Error for TlsError {}

impl CaSource {
    /// Interprets a `SCALR_AGENT_CA_CERT` value: an existing path or a value starting with `/` or `.`
    /// is a file; a value holding `-----BEGIN` is inline PEM; anything else must be base64 of PEM.
    pub fn from_setting(value: &str) -> Result<CaSource, String> {
        let value = value.trim();
        if value.contains("-----BEGIN") {
            return Ok(CaSource::Pem(value.as_bytes().to_vec()));
        }
        if value.starts_with('/') || value.starts_with('.') || std::path::Path::new(value).exists()
        {
            return Ok(CaSource::File(value.into()));
        }
        let compact: String = value.split_whitespace().collect();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| format!("neither a file path nor base64 ({e})"))?;
        if !String::from_utf8_lossy(&decoded).contains("-----BEGIN CERTIFICATE-----") {
            return Err("decodes from base64 but holds no PEM certificate".into());
        }
        Ok(CaSource::Pem(decoded))
    }

    /// Loads the certificates; at least one is required.
    pub fn load(&self) -> Result<Vec<ureq::tls::Certificate<'static>>, TlsError> {
        let (bytes, origin) = match self {
            CaSource::File(path) => (
                std::fs::read(path).map_err(|source| TlsError::Read {
                    what: "CA bundle",
                    path: path.clone(),
                    source,
                })?,
                path.display().to_string(),
            ),
            CaSource::Pem(pem) => (pem.clone(), "SCALR_AGENT_CA_CERT".to_string()),
        };
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&bytes) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => {
                    return Err(TlsError::BadPem {
                        what: "CA bundle",
                        origin,
                        detail: e.to_string(),
                    });
                }
            }
        }
        if certs.is_empty() {
            return Err(TlsError::NoPem {
                what: "CA bundle",
                origin,
            });
        }
        Ok(certs)
    }
}

impl ClientIdentity {
    /// Loads the chain and key for ureq.
    pub fn load(&self) -> Result<ureq::tls::ClientCert, TlsError> {
        let read = |what, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| TlsError::Read {
                what,
                path: path.to_path_buf(),
                source,
            })
        };
        let cert_pem = read("client certificate", &self.cert_file)?;
        let key_pem = read("client key", &self.key_file)?;
        let origin = |p: &std::path::Path| p.display().to_string();
        identity_from_pem(
            &cert_pem,
            &key_pem,
            &origin(&self.cert_file),
            &origin(&self.key_file),
        )
    }
}

impl ClientIdentityPem {
    /// Parses the chain and key for ureq.
    pub fn load(&self) -> Result<ureq::tls::ClientCert, TlsError> {
        identity_from_pem(&self.cert_pem, &self.key_pem, &self.origin, &self.origin)
    }
}

fn identity_from_pem(
    cert_pem: &[u8],
    key_pem: &[u8],
    cert_origin: &str,
    key_origin: &str,
) -> Result<ureq::tls::ClientCert, TlsError> {
    let mut chain = Vec::new();
    for item in ureq::tls::parse_pem(cert_pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => chain.push(cert),
            Ok(_) => {}
            Err(e) => {
                return Err(TlsError::BadPem {
                    what: "client certificate",
                    origin: cert_origin.to_string(),
                    detail: e.to_string(),
                });
            }
        }
    }
    if chain.is_empty() {
        return Err(TlsError::NoPem {
            what: "client certificate",
            origin: cert_origin.to_string(),
        });
    }
    let key = ureq::tls::PrivateKey::from_pem(key_pem).map_err(|_| TlsError::NoPem {
        what: "client key",
        origin: key_origin.to_string(),
    })?;
    Ok(ureq::tls::ClientCert::new_with_certs(&chain, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_setting_forms() {
        assert!(matches!(
            CaSource::from_setting("/etc/ssl/ca.pem"),
            Ok(CaSource::File(_))
        ));
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(CaSource::from_setting(pem), Ok(CaSource::Pem(_))));
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        assert_eq!(
            CaSource::from_setting(&b64),
            Ok(CaSource::Pem(pem.as_bytes().to_vec()))
        );
        assert!(CaSource::from_setting("not base64 !!").is_err());
        let not_pem = base64::engine::general_purpose::STANDARD.encode("hello");
        assert!(CaSource::from_setting(&not_pem).is_err());
    }

    #[test]
    fn empty_bundle_is_rejected() {
        let err = CaSource::Pem(b"nothing here".to_vec()).load().unwrap_err();
        assert!(matches!(err, TlsError::NoPem { .. }), "{err}");
        let err = CaSource::File("/nonexistent/ca.pem".into())
            .load()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"));
    }
}
