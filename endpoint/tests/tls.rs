//! The endpoint over HTTPS (rustls, aws-lc-rs): a private CA signs the server's
//! certificate for 127.0.0.1; a client trusting that CA uploads a whole report (manifest,
//! chunks, completion) and reads it back; a client trusting another CA, and a plain-HTTP
//! client, are refused before anything is stored; the server keeps serving.

mod common;

use common::*;
use crashmesh_endpoint::config::TlsConfig;
use crashmesh_endpoint_client::Client;

struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

/// A CA and a certificate it signs for `127.0.0.1` and `localhost`.
fn make_pki() -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "crashmesh test endpoint CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        cert_pem: server_cert.pem(),
        key_pem: server_key.serialize_pem(),
    }
}

#[test]
fn reports_go_up_over_https_to_a_client_that_trusts_the_ca_and_no_one_else() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let pki = make_pki();
    let other = make_pki();
    let files = tempfile::tempdir().unwrap();
    let cert_file = files.path().join("cert.pem");
    let key_file = files.path().join("key.pem");
    std::fs::write(&cert_file, &pki.cert_pem).unwrap();
    std::fs::write(&key_file, &pki.key_pem).unwrap();
    let harness = Harness::start_with(|config| {
        config.tls = Some(TlsConfig {
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
        })
    });
    assert!(harness.url.starts_with("https://"), "{}", harness.url);

    // The admin makes a token over HTTPS, then the cluster uploads over HTTPS.
    let admin = Client::with_ca(&harness.url, &harness.admin, pki.ca_pem.as_bytes()).unwrap();
    let answer = admin
        .post("/api/v1/tokens", br#"{"cluster":"tls-cluster"}"#)
        .unwrap();
    assert_eq!(answer.status, 201, "{}", answer.body);
    let token = answer.json()["token"].as_str().unwrap().to_string();
    let client = Client::with_ca(&harness.url, &token, pki.ca_pem.as_bytes()).unwrap();
    let (manifest, chunks) = report(
        "tls-cluster",
        1,
        "tls-report",
        problem("v1:tls0000000000000000000000000000000000000", "tls_path"),
        vec![incident("node-1", "1", 1_790_000_000_000, None)],
        &log_bytes("tls", 300_000),
    );
    let reply = client.upload(&manifest, &chunks).unwrap();
    assert!(!reply.known);
    let listed = client.get("/api/v1/problems").unwrap();
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["problems"].as_array().unwrap().len(), 1);
    let stored_chunks = harness.chunks_stored();
    assert!(stored_chunks > 0);

    // Another CA's client does not get past the handshake; nothing more is stored.
    let stranger = Client::with_ca(&harness.url, &token, other.ca_pem.as_bytes()).unwrap();
    let (other_manifest, other_chunks) = report(
        "tls-cluster",
        1,
        "tls-report-2",
        problem("v1:tls1111111111111111111111111111111111111", "tls_other"),
        vec![incident("node-2", "1", 1_790_000_000_000, None)],
        &log_bytes("tls-2", 300_000),
    );
    let refused = stranger.upload(&other_manifest, &other_chunks);
    assert!(
        matches!(
            refused,
            Err(crashmesh_endpoint_client::ClientError::Transport(_))
        ),
        "{refused:?}"
    );
    // Plain HTTP to the TLS port gets no answer either.
    let plain_url = harness.url.replacen("https://", "http://", 1);
    let plain = Client::new(&plain_url, &token).get("/api/v1/problems");
    assert!(
        plain.is_err() || plain.as_ref().unwrap().status >= 400,
        "{plain:?}"
    );
    assert_eq!(harness.chunks_stored(), stored_chunks);
    // A CA file without a certificate is a clear error, not a client trusting nothing.
    assert!(Client::with_ca(&harness.url, &token, b"not a certificate").is_err());

    // The server still serves its trusting clients.
    let again = client.get("/api/v1/problems").unwrap();
    assert_eq!(again.json()["problems"].as_array().unwrap().len(), 1);

    // Signed in over TLS, the dashboard's session cookie is `Secure` (never sent in clear).
    let roots: Vec<_> = ureq::tls::parse_pem(pki.ca_pem.as_bytes())
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(certificate)) => Some(certificate),
            _ => None,
        })
        .collect();
    let browser: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(roots)))
                .unversioned_rustls_crypto_provider(std::sync::Arc::new(
                    rustls::crypto::aws_lc_rs::default_provider(),
                ))
                .build(),
        )
        .build()
        .into();
    let signed_in = browser
        .post(format!("{}/signin", harness.url))
        .header("Sec-Fetch-Site", "same-origin")
        .send_form([("token", harness.admin.as_str()), ("next", "/")])
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
}
