//! Tokens and who is asking: one token per cluster (its uploads, and reads of its own
//! data), one admin token (every read, and every write: bugs, core requests, tokens), one
//! metrics token (`/metrics` only), and dashboard sessions signed in with one of the first
//! two.
//!
//! Invariants: a token is 256 random bits, printed once; only its blake3 hash is stored.
//! The admin and metrics tokens live in `DATA_DIR/admin.token` and `DATA_DIR/metrics.token`
//! (mode 0600, created new, never through a link), made at first start. Comparisons of
//! secrets go through their hashes, so they take the same time whatever the input.
//!
//! A dashboard session is a cookie the server can verify without keeping state:
//! `v1.<expiry, Unix secs>.<blake3 of the token>.<MAC>`, the MAC a keyed blake3 of the
//! rest under `DATA_DIR/session.key` (32 random bytes, 0600). The cookie does not hold the
//! token itself, so a cookie that leaks (a browser profile, a proxy's log) gives neither
//! the right to upload as the cluster nor a credential that outlives
//! [`SESSION_SECS_MAX`]; the hash inside maps to a viewer only through the token table (or
//! the admin token), so a session ends with its token, and deleting `session.key` ends
//! every session at once.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::error::EndpointError;
use crate::storage::db::Db;
pub use crate::storage::db::Viewer;

/// Cluster tokens start with this, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "cmt_";
/// The admin token's prefix.
pub const ADMIN_TOKEN_PREFIX: &str = "cma_";
/// The metrics token's prefix.
pub const METRICS_TOKEN_PREFIX: &str = "cmm_";
/// Longest `Authorization` value looked at.
pub const AUTHORIZATION_BYTES_MAX: usize = 256;
/// Cluster tokens remembered after their first use.
pub const CACHED_TOKENS_MAX: usize = 65_536;
/// How long a dashboard session lasts after signing in.
pub const SESSION_SECS_MAX: u64 = 12 * 3600;
/// The dashboard session's cookie.
pub const SESSION_COOKIE: &str = "crashmesh_session";
/// Longest session cookie value looked at.
pub const SESSION_COOKIE_BYTES_MAX: usize = 256;
/// Bytes of the session key.
const SESSION_KEY_BYTES: usize = 32;

/// Where a request's credential came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `Authorization: Bearer …`: a browser never sends it on its own, so no other site
    /// can make one send it.
    Bearer,
    /// The dashboard's session cookie: sent by the browser, so a write that relies on it
    /// must also come from the dashboard's own pages.
    Session,
}

/// A fresh random token with `prefix`.
fn new_token_with(prefix: &str) -> Result<String, EndpointError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| EndpointError::Config(format!("no random source: {error}")))?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{prefix}{hex}"))
}

/// A fresh random cluster token.
pub fn new_token() -> Result<String, EndpointError> {
    new_token_with(TOKEN_PREFIX)
}

/// What is stored of a token.
pub fn token_hash(token: &str) -> String {
    blake3::hash(token.as_bytes()).to_hex().to_string()
}

/// Makes a token for a cluster, stores its hash, and returns the token (shown once).
pub fn create_cluster_token(db: &Db, cluster: &str) -> Result<String, EndpointError> {
    if !crashmesh_protocol::report::is_safe_name(
        cluster,
        crashmesh_protocol::report::NAME_BYTES_MAX,
    ) {
        return Err(EndpointError::BadRequest(format!(
            "cluster name {cluster:?} is not 1..=128 bytes of A-Z a-z 0-9 . _ : -"
        )));
    }
    let token = new_token()?;
    db.add_token(&token_hash(&token), cluster)?;
    Ok(token)
}

/// The most bytes read of a secret file (a token, the session key).
const SECRET_FILE_BYTES_MAX: u64 = 4096;

/// A secret file of the data dir: read when present, else made new (0600, never through
/// a link) from `make`.
fn secret_file(
    path: &Path,
    make: impl FnOnce() -> Result<Vec<u8>, EndpointError>,
) -> Result<Vec<u8>, EndpointError> {
    match crashmesh_untrusted::open_in_dir(path, crashmesh_untrusted::Rules::REGULAR) {
        Ok(mut opened) => {
            let bytes = opened
                .read_capped(SECRET_FILE_BYTES_MAX)
                .map_err(|error| EndpointError::io("read", path, error))?;
            if !bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(bytes);
            }
        }
        Err(error) if error.is_not_found() => {}
        Err(error) => return Err(error.into()),
    }
    let bytes = make()?;
    let tmp = path.with_extension("tmp");
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(EndpointError::io("remove", &tmp, error)),
    }
    let mut file = crashmesh_untrusted::create_private(&tmp)?;
    file.write_all(&bytes)
        .and_then(|_| file.sync_all())
        .map_err(|error| EndpointError::io("write", &tmp, error))?;
    std::fs::rename(&tmp, path).map_err(|error| EndpointError::io("rename", path, error))?;
    Ok(bytes)
}

fn token_file(path: &Path, prefix: &str) -> Result<String, EndpointError> {
    let bytes = secret_file(path, || {
        Ok(format!("{}\n", new_token_with(prefix)?).into_bytes())
    })?;
    String::from_utf8(bytes)
        .map(|text| text.trim().to_string())
        .map_err(|_| EndpointError::Config(format!("{} is not text", path.display())))
}

/// The admin token, made (0600) when absent.
pub fn admin_token(data_dir: &Path) -> Result<String, EndpointError> {
    token_file(&data_dir.join("admin.token"), ADMIN_TOKEN_PREFIX)
}

/// The metrics token (`/metrics` only, for a scraper), made (0600) when absent.
pub fn metrics_token(data_dir: &Path) -> Result<String, EndpointError> {
    token_file(&data_dir.join("metrics.token"), METRICS_TOKEN_PREFIX)
}

/// The key that signs dashboard sessions, made (0600) when absent.
pub fn session_key(data_dir: &Path) -> Result<[u8; SESSION_KEY_BYTES], EndpointError> {
    let path = data_dir.join("session.key");
    let bytes = secret_file(&path, || {
        let mut key = [0u8; SESSION_KEY_BYTES];
        getrandom::fill(&mut key)
            .map_err(|error| EndpointError::Config(format!("no random source: {error}")))?;
        Ok(key.to_vec())
    })?;
    bytes.try_into().map_err(|_| {
        EndpointError::Config(format!(
            "{} is not {SESSION_KEY_BYTES} bytes (delete it to make a new one)",
            path.display()
        ))
    })
}

/// Checks tokens and sessions.
pub struct Auth {
    db: Arc<Db>,
    admin_hash: String,
    metrics_hash: String,
    session_key: [u8; SESSION_KEY_BYTES],
    known: Mutex<HashMap<String, String>>,
}

/// The token of an `Authorization: Bearer …` value.
pub fn bearer(authorization: Option<&str>) -> Option<&str> {
    let value = authorization?;
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return None;
    }
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then_some(token)
}

impl Auth {
    /// Checks against `db`, the admin and metrics tokens, and sessions signed with
    /// `session_key`.
    pub fn new(
        db: Arc<Db>,
        admin_token: &str,
        metrics_token: &str,
        session_key: [u8; SESSION_KEY_BYTES],
    ) -> Auth {
        Auth {
            db,
            admin_hash: token_hash(admin_token),
            metrics_hash: token_hash(metrics_token),
            session_key,
            known: Mutex::new(HashMap::new()),
        }
    }

    fn cluster_of_hash(&self, hash: &str) -> Result<String, EndpointError> {
        if let Some(cluster) = self.known.lock().unwrap().get(hash) {
            return Ok(cluster.clone());
        }
        let cluster = self
            .db
            .cluster_of_token(hash)?
            .ok_or(EndpointError::Unauthorized)?;
        let mut known = self.known.lock().unwrap();
        if known.len() >= CACHED_TOKENS_MAX {
            known.clear();
        }
        known.insert(hash.to_string(), cluster.clone());
        Ok(cluster)
    }

    /// The cluster of a token, or 401.
    pub fn cluster(&self, token: Option<&str>) -> Result<String, EndpointError> {
        let token = token.ok_or(EndpointError::Unauthorized)?;
        self.cluster_of_hash(&token_hash(token))
    }

    /// Ok for the admin token, else 401.
    pub fn admin(&self, token: Option<&str>) -> Result<(), EndpointError> {
        match token {
            Some(token) if token_hash(token) == self.admin_hash => Ok(()),
            _ => Err(EndpointError::Unauthorized),
        }
    }

    /// Ok for the metrics or the admin token, else 401.
    pub fn metrics(&self, token: Option<&str>) -> Result<(), EndpointError> {
        match token.map(token_hash) {
            Some(hash) if hash == self.metrics_hash || hash == self.admin_hash => Ok(()),
            _ => Err(EndpointError::Unauthorized),
        }
    }

    fn viewer_of_hash(&self, hash: &str) -> Result<Viewer, EndpointError> {
        if hash == self.admin_hash {
            return Ok(Viewer::Admin);
        }
        self.cluster_of_hash(hash).map(Viewer::Cluster)
    }

    /// Who a token speaks for: the admin or a cluster (the metrics token is neither).
    pub fn viewer(&self, token: Option<&str>) -> Result<Viewer, EndpointError> {
        let token = token.ok_or(EndpointError::Unauthorized)?;
        self.viewer_of_hash(&token_hash(token))
    }

    fn session_mac(&self, expires_secs: u64, hash: &str) -> blake3::Hash {
        let mut hasher = blake3::Hasher::new_keyed(&self.session_key);
        hasher.update(b"crashmesh session v1\0");
        hasher.update(expires_secs.to_string().as_bytes());
        hasher.update(b"\0");
        hasher.update(hash.as_bytes());
        hasher.finalize()
    }

    /// A session cookie's value for a token of the admin or a cluster, valid until
    /// `now_secs + SESSION_SECS_MAX`; 401 for any other token.
    pub fn new_session(&self, token: &str, now_secs: u64) -> Result<String, EndpointError> {
        let hash = token_hash(token);
        self.viewer_of_hash(&hash)?;
        let expires_secs = now_secs + SESSION_SECS_MAX;
        let mac = self.session_mac(expires_secs, &hash);
        Ok(format!("v1.{expires_secs}.{hash}.{}", mac.to_hex()))
    }

    /// Who a session cookie speaks for, or 401 (forged, expired, or its token unknown).
    pub fn session(&self, value: &str, now_secs: u64) -> Result<Viewer, EndpointError> {
        if value.len() > SESSION_COOKIE_BYTES_MAX {
            return Err(EndpointError::Unauthorized);
        }
        let mut parts = value.split('.');
        let (Some("v1"), Some(expires), Some(hash), Some(mac), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(EndpointError::Unauthorized);
        };
        let expires_secs: u64 = expires.parse().map_err(|_| EndpointError::Unauthorized)?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| EndpointError::Unauthorized)?;
        // blake3::Hash compares in constant time.
        if mac != self.session_mac(expires_secs, hash) || expires_secs <= now_secs {
            return Err(EndpointError::Unauthorized);
        }
        self.viewer_of_hash(hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_verified_expire_and_end_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(dir.path()).unwrap());
        let cluster_token = create_cluster_token(&db, "c1").unwrap();
        let key = session_key(dir.path()).unwrap();
        assert_eq!(session_key(dir.path()).unwrap(), key, "kept");
        let auth = Auth::new(db.clone(), "cma_admin", "cmm_metrics", key);
        let now = 1_800_000_000;
        let admin = auth.new_session("cma_admin", now).unwrap();
        assert_eq!(auth.session(&admin, now + 1).unwrap(), Viewer::Admin);
        let cluster = auth.new_session(&cluster_token, now).unwrap();
        assert_eq!(
            auth.session(&cluster, now).unwrap(),
            Viewer::Cluster("c1".into())
        );
        assert!(!cluster.contains(&cluster_token), "the token is not in it");
        // Expired, forged, or signed with another key: refused.
        assert!(auth.session(&cluster, now + SESSION_SECS_MAX).is_err());
        let later = cluster.replacen(
            &format!("v1.{}", now + SESSION_SECS_MAX),
            &format!("v1.{}", now + 10 * SESSION_SECS_MAX),
            1,
        );
        assert!(auth.session(&later, now).is_err());
        let admin_hash = token_hash("cma_admin");
        let as_admin = cluster.replacen(&token_hash(&cluster_token), &admin_hash, 1);
        assert!(auth.session(&as_admin, now).is_err());
        let other = Auth::new(db, "cma_admin", "cmm_metrics", [7; 32]);
        assert!(other.session(&admin, now).is_err());
        for garbage in ["", "v1", "v1.1.2.3", "v2.1.2.3", &"v1.".repeat(200)] {
            assert!(auth.session(garbage, now).is_err(), "{garbage}");
        }
        // Only the admin's and clusters' tokens sign in.
        assert!(auth.new_session("cmm_metrics", now).is_err());
        assert!(auth.new_session("cmt_wrong", now).is_err());
        assert!(auth.metrics(Some("cmm_metrics")).is_ok());
        assert!(auth.metrics(Some("cma_admin")).is_ok());
        assert!(auth.metrics(Some(&cluster_token)).is_err());
        assert!(auth.viewer(Some("cmm_metrics")).is_err());
    }

    #[test]
    fn token_files_are_made_once_owner_only_and_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let token = admin_token(dir.path()).unwrap();
        assert!(token.starts_with(ADMIN_TOKEN_PREFIX));
        assert_eq!(admin_token(dir.path()).unwrap(), token);
        let mode = std::fs::metadata(dir.path().join("admin.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A link planted where the metrics token goes is refused, its target untouched.
        let target = dir.path().join("target");
        std::os::unix::fs::symlink(&target, dir.path().join("metrics.token")).unwrap();
        assert!(matches!(
            metrics_token(dir.path()),
            Err(EndpointError::Exists { .. })
        ));
        assert!(!target.exists());
    }
}
