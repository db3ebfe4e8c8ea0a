//! Test PKI: a fresh certificate authority per test, server certificates for 127.0.0.1/localhost and
//! client certificates (for mTLS and Kubernetes x509 identities), as PEM strings and rustls configs.

#![allow(dead_code)]

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
}

/// A leaf certificate and its key, PEM.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed ca");
        let cert_pem = issuer.pem();
        TestCa { issuer, cert_pem }
    }

    /// A server certificate valid for `127.0.0.1`, `::1` and `localhost`.
    pub fn server_cert(&self) -> Leaf {
        let mut params = CertificateParams::new(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ])
        .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate with common name `cn` and organisations `groups` (Kubernetes reads the
    /// user from CN and groups from O).
    pub fn client_cert(&self, cn: &str, groups: &[&str]) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, cn);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// Root store holding this CA, for server-side client verification.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.issuer.der().clone())
            .expect("add ca to root store");
        roots
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn parse_chain(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("parse cert pem")
}

fn parse_key(pem: &str) -> rustls::pki_types::PrivateKeyDer<'static> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("parse key pem")
}

/// How the test server treats client certificates.
pub enum ClientAuth<'a> {
    /// Never asks.
    None,
    /// Asks, accepts connections without one (Kubernetes-style: cert or bearer token).
    Optional(&'a TestCa),
    /// Requires one signed by the CA.
    Required(&'a TestCa),
}

/// A rustls server config presenting `leaf`.
pub fn server_config(leaf: &Leaf, client_auth: ClientAuth<'_>) -> Arc<rustls::ServerConfig> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional(ca) | ClientAuth::Required(ca) => {
            let optional = matches!(client_auth, ClientAuth::Optional(_));
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.root_store()),
                provider(),
            );
            let verifier = if optional {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(verifier.build().expect("client verifier"))
        }
    };
    let mut config = builder
        .with_single_cert(parse_chain(&leaf.cert_pem), parse_key(&leaf.key_pem))
        .expect("server cert");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Reads the subject CN and O values from a DER certificate (enough for Kubernetes identities).
pub fn subject_names(der: &[u8]) -> (Option<String>, Vec<String>) {
    // OIDs 2.5.4.3 (CN) and 2.5.4.10 (O), each followed by a string TLV.
    let mut cn = None;
    let mut orgs = Vec::new();
    let mut i = 0;
    while i + 5 < der.len() {
        if der[i] == 0x06 && der[i + 1] == 0x03 && der[i + 2] == 0x55 && der[i + 3] == 0x04 {
            let attr = der[i + 4];
            let tag_at = i + 5;
            if tag_at + 1 < der.len() {
                let len = der[tag_at + 1] as usize;
                let start = tag_at + 2;
                if start + len <= der.len() {
                    let value = String::from_utf8_lossy(&der[start..start + len]).into_owned();
                    match attr {
                        3 => cn = Some(value),
                        10 => orgs.push(value),
                        _ => {}
                    }
                }
            }
        }
        i += 1;
    }
    // The issuer's names come first in the DER: the subject's are the last ones seen.
    (cn, orgs)
}
