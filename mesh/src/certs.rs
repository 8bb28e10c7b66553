//! The cluster's certificates: `crashmesh cluster init` makes a cluster CA and a cluster
//! id, `crashmesh cluster issue NODE` signs a node certificate with it.
//!
//! Layout (`<data dir>/cluster/`, mode 0700):
//! - `ca.pem`: the cluster CA certificate (ECDSA P-256, self-signed, valid
//!   [`CA_VALIDITY_YEARS`] years, path length 0: it signs node certificates only).
//! - `ca.key`: its private key (PKCS#8 PEM, mode 0600).
//! - `cluster.json`: `{"format_version": 1, "cluster_id": "…"}`.
//! - `nodes/NODE.pem`, `nodes/NODE.key` (0600): a node's certificate and key, by default.
//!
//! A node certificate names the node in its only DNS SAN (what peers verify and what the
//! transport reads back as the peer's name), carries `CN=NODE, O=<cluster id>` as subject,
//! and is valid for both TLS server and client authentication (mutual TLS).
//!
//! Invariants:
//! - Nothing here overwrites a key or certificate: files are written to a temporary name,
//!   synced, then hard-linked into place (which fails if the name exists), and the directory
//!   is synced.
//! - Every issued certificate is verified against the CA (as a server for its name and as a
//!   client) before it is written, so a CA key that does not belong to `ca.pem` is caught
//!   at issue time rather than at the first handshake.
//! - Keys are generated and signed through aws-lc-rs only (rcgen without ring).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::Datelike as _;
use crashmesh_privacy::pseudonym::PseudonymKey;
use crashmesh_protocol::wire::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};

/// How long the cluster CA is valid: long, because replacing it means re-issuing every node.
pub const CA_VALIDITY_YEARS: i32 = 30;
/// How long a node certificate is valid.
pub const NODE_VALIDITY_YEARS: i32 = 10;
/// The version of `cluster.json`.
pub const CLUSTER_FILE_FORMAT_VERSION: u32 = 1;
/// The largest PEM or JSON file read from the cluster directory.
pub const CLUSTER_FILE_BYTES_MAX: u64 = 64 * 1024;
/// The length of a generated cluster id in bytes of randomness (hex-encoded, so twice as
/// many characters).
pub const CLUSTER_ID_RANDOM_BYTES: usize = 12;

/// What went wrong with the cluster's certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("a cluster CA already exists at {0} (refusing to overwrite it)")]
    CaExists(PathBuf),
    #[error("{0} already exists (refusing to overwrite it; remove it first to re-issue)")]
    FileExists(PathBuf),
    #[error("no cluster CA at {0}: run `crashmesh cluster init` first")]
    NoCa(PathBuf),
    #[error(
        "invalid node name {0:?}: 1 to 64 lower-case letters, digits, '.', '-' or '_', a valid DNS name, not an IP address"
    )]
    InvalidNodeName(String),
    #[error("invalid cluster id {0:?}: 1 to 64 of [A-Za-z0-9._-], not starting with '.'")]
    InvalidClusterId(String),
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("the issued certificate does not verify against the cluster CA: {0}")]
    IssuedDoesNotVerify(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `cluster.json`: the cluster's id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterFile {
    pub format_version: u32,
    pub cluster_id: String,
}

/// Where a cluster's files live, under `<data dir>/cluster/`.
#[derive(Clone, Debug)]
pub struct ClusterPaths {
    pub dir: PathBuf,
}

impl ClusterPaths {
    /// The cluster directory of a data dir.
    pub fn of_data_dir(data_dir: &Path) -> ClusterPaths {
        ClusterPaths {
            dir: data_dir.join("cluster"),
        }
    }
    /// The CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// The CA's private key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `cluster.json`.
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join("cluster.json")
    }
    /// The cluster's pseudonym key for customer mode (see `crate::customer`).
    pub fn privacy_key(&self) -> PathBuf {
        self.dir.join(PRIVACY_KEY_FILE)
    }
    /// Where `cluster issue` writes node certificates unless told otherwise.
    pub fn nodes_dir(&self) -> PathBuf {
        self.dir.join("nodes")
    }
}

/// What `cluster init` made.
#[derive(Clone, Debug, Serialize)]
pub struct InitOutcome {
    pub cluster_id: String,
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cluster_file: PathBuf,
    /// The cluster's pseudonym key (customer mode); copy it to every node with `ca.pem`.
    pub privacy_key: PathBuf,
    /// The CA's last valid day, `YYYY-MM-DD` (UTC).
    pub not_after: String,
}

/// What `cluster issue` made.
#[derive(Clone, Debug, Serialize)]
pub struct IssueOutcome {
    pub node: String,
    pub cluster_id: String,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca_cert: PathBuf,
    /// The certificate's last valid day, `YYYY-MM-DD` (UTC).
    pub not_after: String,
}

/// True for a name `cluster issue` accepts: a valid [`NodeId`], lower case (DNS names
/// compare case-insensitively, so `Node-1` and `node-1` would be one certificate name for
/// two members), a valid DNS name, and not an IP address (rcgen would make it an IP SAN).
pub fn is_valid_node_name(name: &str) -> bool {
    NodeId(name.to_string()).is_valid()
        && !name.bytes().any(|byte| byte.is_ascii_uppercase())
        && name.parse::<std::net::IpAddr>().is_err()
        && matches!(ServerName::try_from(name), Ok(ServerName::DnsName(_)))
}

/// True for a cluster id: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot.
pub fn is_valid_cluster_id(cluster_id: &str) -> bool {
    // The same rule as node names (protocol's plain names).
    NodeId(cluster_id.to_string()).is_valid()
}

/// A random cluster id: `c` and 24 hex digits.
pub fn random_cluster_id() -> Result<String, CertError> {
    let mut bytes = [0u8; CLUSTER_ID_RANDOM_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| CertError::BadFile {
        path: PathBuf::from("getrandom"),
        message: error.to_string(),
    })?;
    let mut id = String::from("c");
    for byte in bytes {
        id.push_str(&format!("{byte:02x}"));
    }
    Ok(id)
}

/// `crashmesh cluster init`: a new cluster CA and cluster id in `paths.dir`. Refuses when
/// a CA (certificate or key) or `cluster.json` is already there.
pub fn init_cluster(
    paths: &ClusterPaths,
    cluster_id: Option<&str>,
) -> Result<InitOutcome, CertError> {
    let cluster_id = match cluster_id {
        Some(id) => id.to_string(),
        None => random_cluster_id()?,
    };
    if !is_valid_cluster_id(&cluster_id) {
        return Err(CertError::InvalidClusterId(cluster_id));
    }
    for existing in [
        paths.ca_cert(),
        paths.ca_key(),
        paths.cluster_file(),
        paths.privacy_key(),
    ] {
        if existing.exists() {
            return Err(CertError::CaExists(existing));
        }
    }
    create_private_dir(&paths.dir)?;

    let ca_key = KeyPair::generate()?;
    let (params, not_after) = ca_params(&cluster_id)?;
    let ca_cert = params.self_signed(&ca_key)?;

    let cluster_file = ClusterFile {
        format_version: CLUSTER_FILE_FORMAT_VERSION,
        cluster_id: cluster_id.clone(),
    };
    let mut cluster_json =
        serde_json::to_vec_pretty(&cluster_file).expect("cluster file serializes");
    cluster_json.push(b'\n');
    // The key first: a CA certificate without its key would be useless, while a key alone
    // still makes the next `init` refuse (nothing half-made is silently replaced).
    write_new_file(&paths.ca_key(), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write_new_file(&paths.ca_cert(), ca_cert.pem().as_bytes(), 0o644)?;
    write_new_file(&paths.cluster_file(), &cluster_json, 0o644)?;
    let privacy_key = new_key_text().map_err(|error| CertError::BadFile {
        path: paths.privacy_key(),
        message: error.to_string(),
    })?;
    write_new_file(&paths.privacy_key(), privacy_key.as_bytes(), 0o600)?;
    sync_dir(&paths.dir)?;
    Ok(InitOutcome {
        cluster_id,
        ca_cert: paths.ca_cert(),
        ca_key: paths.ca_key(),
        cluster_file: paths.cluster_file(),
        privacy_key: paths.privacy_key(),
        not_after,
    })
}

/// `crashmesh cluster issue NODE`: a node certificate and key signed by the cluster CA,
/// written as `NODE.pem` and `NODE.key` (0600) in `out_dir`. Refuses to overwrite either.
pub fn issue_node(
    paths: &ClusterPaths,
    node: &str,
    out_dir: &Path,
) -> Result<IssueOutcome, CertError> {
    if !is_valid_node_name(node) {
        return Err(CertError::InvalidNodeName(node.to_string()));
    }
    if !paths.ca_cert().exists() || !paths.ca_key().exists() {
        return Err(CertError::NoCa(paths.dir.clone()));
    }
    let cluster_id = read_cluster_file(&paths.cluster_file())?.cluster_id;
    let cert_path = out_dir.join(format!("{node}.pem"));
    let key_path = out_dir.join(format!("{node}.key"));
    for existing in [&cert_path, &key_path] {
        if existing.exists() {
            return Err(CertError::FileExists(existing.clone()));
        }
    }
    let ca_key_pem = read_bounded(&paths.ca_key())?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|error| CertError::BadFile {
        path: paths.ca_key(),
        message: error.to_string(),
    })?;
    let ca_cert = load_certs(&paths.ca_cert())?;

    // The issuer's name is rebuilt from the cluster id exactly as `init` made it; the
    // verification below proves it matches `ca.pem` (and that the key is the CA's).
    let issuer = Issuer::new(ca_params(&cluster_id)?.0, &ca_key);
    let node_key = KeyPair::generate()?;
    let (params, not_after) = node_params(node, &cluster_id)?;
    let node_cert = params.signed_by(&node_key, &issuer)?;
    verify_issued(&ca_cert, node_cert.der(), node)?;

    create_private_dir(out_dir)?;
    write_new_file(&key_path, node_key.serialize_pem().as_bytes(), 0o600)?;
    write_new_file(&cert_path, node_cert.pem().as_bytes(), 0o644)?;
    sync_dir(out_dir)?;
    Ok(IssueOutcome {
        node: node.to_string(),
        cluster_id,
        cert: cert_path,
        key: key_path,
        ca_cert: paths.ca_cert(),
        not_after,
    })
}

/// Reads `cluster.json`.
pub fn read_cluster_file(path: &Path) -> Result<ClusterFile, CertError> {
    let text = read_bounded(path)?;
    let file: ClusterFile = serde_json::from_str(&text).map_err(|error| CertError::BadFile {
        path: path.to_path_buf(),
        message: error.to_string(),
    })?;
    if file.format_version != CLUSTER_FILE_FORMAT_VERSION {
        return Err(CertError::BadFile {
            path: path.to_path_buf(),
            message: format!("unknown format_version {}", file.format_version),
        });
    }
    if !is_valid_cluster_id(&file.cluster_id) {
        return Err(CertError::InvalidClusterId(file.cluster_id));
    }
    Ok(file)
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let text = read_bounded(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| CertError::BadFile {
            path: path.to_path_buf(),
            message: format!("not PEM certificates: {error}"),
        })?;
    if certs.is_empty() {
        return Err(CertError::BadFile {
            path: path.to_path_buf(),
            message: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, CertError> {
    let text = read_bounded(path)?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|error| CertError::BadFile {
        path: path.to_path_buf(),
        message: format!("not a PEM private key: {error}"),
    })
}

/// The CA's parameters; `issue` rebuilds them to name the issuer, so they depend on the
/// cluster id and the clock only (the validity, which the issuer does not carry).
fn ca_params(cluster_id: &str) -> Result<(CertificateParams, String), CertError> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        format!("crashmesh cluster CA {cluster_id}"),
    );
    name.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial()?);
    let not_after = set_validity(&mut params, CA_VALIDITY_YEARS);
    Ok((params, not_after))
}

fn node_params(node: &str, cluster_id: &str) -> Result<(CertificateParams, String), CertError> {
    let mut params = CertificateParams::new(vec![node.to_string()])?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, node);
    name.push(DnType::OrganizationName, cluster_id);
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial()?);
    let not_after = set_validity(&mut params, NODE_VALIDITY_YEARS);
    Ok((params, not_after))
}

/// Valid from yesterday (a peer whose clock is a little behind still accepts it) for
/// `years` years; returns the last day, `YYYY-MM-DD`.
fn set_validity(params: &mut CertificateParams, years: i32) -> String {
    let yesterday = chrono::Utc::now().date_naive() - chrono::Days::new(1);
    let month = yesterday.month() as u8;
    // The 29th of February does not exist in most years; the 28th always does.
    let day = (yesterday.day() as u8).min(28);
    params.not_before = rcgen::date_time_ymd(yesterday.year(), month, day);
    params.not_after = rcgen::date_time_ymd(yesterday.year() + years, month, day);
    format!("{:04}-{month:02}-{day:02}", yesterday.year() + years)
}

fn random_serial() -> Result<SerialNumber, CertError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| CertError::BadFile {
        path: PathBuf::from("getrandom"),
        message: error.to_string(),
    })?;
    // A positive INTEGER: the top bit clear.
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The issued certificate must verify against the CA both as a server named `node` and as
/// a client, exactly as peers will check it.
fn verify_issued(
    ca_certs: &[CertificateDer<'static>],
    node_cert: &CertificateDer<'static>,
    node: &str,
) -> Result<(), CertError> {
    use rustls::client::danger::ServerCertVerifier as _;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in ca_certs {
        roots
            .add(ca.clone())
            .map_err(|error| CertError::IssuedDoesNotVerify(format!("CA: {error}")))?;
    }
    let roots = Arc::new(roots);
    let server_verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|error| CertError::IssuedDoesNotVerify(error.to_string()))?;
    let client_verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
            .build()
            .map_err(|error| CertError::IssuedDoesNotVerify(error.to_string()))?;
    let name = ServerName::try_from(node.to_string())
        .map_err(|error| CertError::IssuedDoesNotVerify(error.to_string()))?;
    let now = UnixTime::now();
    server_verifier
        .verify_server_cert(node_cert, &[], &name, &[], now)
        .map_err(|error| CertError::IssuedDoesNotVerify(format!("as a server: {error}")))?;
    client_verifier
        .verify_client_cert(node_cert, &[], now)
        .map_err(|error| CertError::IssuedDoesNotVerify(format!("as a client: {error}")))?;
    Ok(())
}

fn read_bounded(path: &Path) -> Result<String, CertError> {
    let meta = std::fs::metadata(path).map_err(io_error(path))?;
    if meta.len() > CLUSTER_FILE_BYTES_MAX {
        return Err(CertError::BadFile {
            path: path.to_path_buf(),
            message: format!("over {CLUSTER_FILE_BYTES_MAX} bytes"),
        });
    }
    std::fs::read_to_string(path).map_err(io_error(path))
}

fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` with `mode`, never replacing an existing file: a temporary
/// file is written and synced, then hard-linked to `path` (which fails if it exists).
fn write_new_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    let dir = path.parent().expect("a file in a directory");
    let name = path.file_name().expect("a file name").to_string_lossy();
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temp);
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(io_error(&temp))?;
        // The umask may have narrowed the mode; a certificate should stay readable.
        file.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io_error(&temp))?;
        file.write_all(bytes).map_err(io_error(&temp))?;
        file.sync_all().map_err(io_error(&temp))?;
        std::fs::hard_link(&temp, path).map_err(|error| {
            if error.kind() == std::io::ErrorKind::AlreadyExists {
                CertError::FileExists(path.to_path_buf())
            } else {
                io_error(path)(error)
            }
        })
    })();
    let _ = std::fs::remove_file(&temp);
    result
}

fn sync_dir(dir: &Path) -> Result<(), CertError> {
    std::fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(io_error(dir))
}

/// The cluster's pseudonym key for customer mode, beside its CA: its file's name.
pub const PRIVACY_KEY_FILE: &str = "privacy.key";

/// Reads a key file (64 hex digits).
pub fn read_key(path: &Path) -> anyhow::Result<PseudonymKey> {
    use anyhow::Context as _;
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "customer mode needs the cluster's privacy key at {} (written by `crashmesh \
             cluster init`; copy it to every node with the CA certificate)",
            path.display()
        )
    })?;
    PseudonymKey::from_hex(&text).with_context(|| format!("reading {}", path.display()))
}

/// A new random key as its file's text.
pub fn new_key_text() -> anyhow::Result<String> {
    let mut bytes = [0u8; crashmesh_privacy::pseudonym::KEY_BYTES];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("getrandom: {error}"))?;
    Ok(format!("{}\n", PseudonymKey::from_bytes(bytes).to_hex()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_plain_lower_case_dns_names() {
        for good in ["node-1", "n1", "storage.rack2", "a_b", "x"] {
            assert!(is_valid_node_name(good), "{good}");
        }
        for bad in ["", "Node-1", ".hidden", "a/b", "10.0.0.1", "-x", "a b", "ä"] {
            assert!(!is_valid_node_name(bad), "{bad}");
        }
        assert!(!is_valid_node_name(&"a".repeat(65)));
    }

    #[test]
    fn init_then_issue_writes_keys_private_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ClusterPaths::of_data_dir(dir.path());
        let init = init_cluster(&paths, Some("prod-7")).unwrap();
        assert_eq!(init.cluster_id, "prod-7");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.ca_key()), 0o600);
        assert_eq!(mode(&paths.dir), 0o700);
        assert!(matches!(
            init_cluster(&paths, None),
            Err(CertError::CaExists(_))
        ));

        let issued = issue_node(&paths, "node-1", &paths.nodes_dir()).unwrap();
        assert_eq!(issued.cluster_id, "prod-7");
        assert_eq!(mode(&issued.key), 0o600);
        load_key(&issued.key).unwrap();
        assert_eq!(load_certs(&issued.cert).unwrap().len(), 1);
        assert!(matches!(
            issue_node(&paths, "node-1", &paths.nodes_dir()),
            Err(CertError::FileExists(_))
        ));
        assert!(matches!(
            issue_node(&paths, "Bad Name", &paths.nodes_dir()),
            Err(CertError::InvalidNodeName(_))
        ));
    }

    #[test]
    fn a_ca_key_that_is_not_the_cas_is_caught_at_issue() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ClusterPaths::of_data_dir(dir.path());
        init_cluster(&paths, Some("one")).unwrap();
        let other = tempfile::tempdir().unwrap();
        let other_paths = ClusterPaths::of_data_dir(other.path());
        init_cluster(&other_paths, Some("one")).unwrap();
        // Same cluster id, same names, different key: only the verification notices.
        std::fs::remove_file(paths.ca_key()).unwrap();
        std::fs::copy(other_paths.ca_key(), paths.ca_key()).unwrap();
        assert!(matches!(
            issue_node(&paths, "node-1", &paths.nodes_dir()),
            Err(CertError::IssuedDoesNotVerify(_))
        ));
        assert!(!paths.nodes_dir().join("node-1.key").exists());
    }

    #[test]
    fn init_writes_a_private_pseudonym_key_and_refuses_to_replace_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let paths = ClusterPaths::of_data_dir(dir.path());
        let outcome = init_cluster(&paths, Some("c1")).unwrap();
        assert_eq!(outcome.privacy_key, paths.privacy_key());
        let key = read_key(&paths.privacy_key()).unwrap();
        let mode = std::fs::metadata(paths.privacy_key())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Another cluster gets another key.
        let other = tempfile::tempdir().unwrap();
        let other_paths = ClusterPaths::of_data_dir(other.path());
        init_cluster(&other_paths, Some("c1")).unwrap();
        assert_ne!(read_key(&other_paths.privacy_key()).unwrap(), key);
        // A key alone still makes init refuse (a cluster's key is never replaced).
        for file in [paths.ca_cert(), paths.ca_key(), paths.cluster_file()] {
            std::fs::remove_file(file).unwrap();
        }
        assert!(matches!(
            init_cluster(&paths, Some("c1")),
            Err(CertError::CaExists(path)) if path == paths.privacy_key()
        ));
    }

    #[test]
    fn random_cluster_ids_are_valid_and_differ() {
        let first = random_cluster_id().unwrap();
        assert!(is_valid_cluster_id(&first));
        assert_ne!(first, random_cluster_id().unwrap());
    }
}
