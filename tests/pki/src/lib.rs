//! A certificate authority made for one test, with a server certificate for the control
//! plane on 127.0.0.1 and a client certificate for mutual TLS, written as PEM files.

use std::path::{Path, PathBuf};

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Names the server certificate carries: the address the tests connect to, and a DNS name
/// for tests that check name verification.
pub const SERVER_NAMES: [&str; 2] = ["127.0.0.1", "localhost"];

/// PEM files of one test PKI.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA certificate (what clients and the server trust).
    pub ca: PathBuf,
    /// The control plane's certificate, for [`SERVER_NAMES`].
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA (mutual TLS).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

impl TestPki {
    /// Makes a CA named `name` and its certificates, and writes them into `dir`.
    pub fn create(dir: &Path, name: &str) -> Result<TestPki> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |names: Vec<String>, common_name: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(names)?;
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate()?;
            let cert = params.signed_by(&key, &issuer)?;
            anyhow::Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            SERVER_NAMES.iter().map(|name| name.to_string()).collect(),
            "tollgate control plane",
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let (client_cert, client_key) = leaf(
            Vec::new(),
            "tollgate filter",
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let write = |file: &str, pem: &str| -> Result<PathBuf> {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", &ca_cert.pem())?,
            server_cert: write("server.pem", &server_cert)?,
            server_key: write("server-key.pem", &server_key)?,
            client_cert: write("client.pem", &client_cert)?,
            client_key: write("client-key.pem", &client_key)?,
        })
    }
}
