//! Tokens: one per cluster for uploads, one admin token for writes from the dashboard and
//! the API.
//!
//! Invariants: a token is 256 random bits, printed once; only its blake3 hash is stored.
//! The admin token lives in `DATA_DIR/admin.token` (mode 0600), made at first start.
//! Comparisons of secrets go through their hashes, so they take the same time whatever
//! the input.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::db::Db;
use crate::error::EndpointError;

/// Cluster tokens start with this, so a leaked one is recognisable.
pub const TOKEN_PREFIX: &str = "cmt_";
/// Longest `Authorization` value looked at.
pub const AUTHORIZATION_BYTES_MAX: usize = 256;
/// Cluster tokens remembered after their first use.
pub const CACHED_TOKENS_MAX: usize = 65_536;

/// A fresh random token.
pub fn new_token() -> Result<String, EndpointError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|error| EndpointError::Config(format!("no random source: {error}")))?;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    Ok(format!("{TOKEN_PREFIX}{hex}"))
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

/// The admin token, made (0600) when absent.
pub fn admin_token(data_dir: &Path) -> Result<String, EndpointError> {
    let path = data_dir.join("admin.token");
    match std::fs::read_to_string(&path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_string()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(EndpointError::io("read", &path, error)),
    }
    let token = new_token()?.replacen(TOKEN_PREFIX, "cma_", 1);
    let tmp = data_dir.join("admin.token.tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|error| EndpointError::io("create", &tmp, error))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|error| EndpointError::io("write", &tmp, error))?;
    std::fs::rename(&tmp, &path).map_err(|error| EndpointError::io("rename", &path, error))?;
    Ok(token)
}

/// Checks bearer tokens.
pub struct Auth {
    db: Arc<Db>,
    admin_hash: String,
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
    /// Checks against `db` and the admin token.
    pub fn new(db: Arc<Db>, admin_token: &str) -> Auth {
        Auth {
            db,
            admin_hash: token_hash(admin_token),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster of a token, or 401.
    pub fn cluster(&self, token: Option<&str>) -> Result<String, EndpointError> {
        let token = token.ok_or(EndpointError::Unauthorized)?;
        let hash = token_hash(token);
        if let Some(cluster) = self.known.lock().unwrap().get(&hash) {
            return Ok(cluster.clone());
        }
        let cluster = self
            .db
            .cluster_of_token(&hash)?
            .ok_or(EndpointError::Unauthorized)?;
        let mut known = self.known.lock().unwrap();
        if known.len() >= CACHED_TOKENS_MAX {
            known.clear();
        }
        known.insert(hash, cluster.clone());
        Ok(cluster)
    }

    /// Ok for the admin token, else 401.
    pub fn admin(&self, token: Option<&str>) -> Result<(), EndpointError> {
        match token {
            Some(token) if token_hash(token) == self.admin_hash => Ok(()),
            _ => Err(EndpointError::Unauthorized),
        }
    }
}
