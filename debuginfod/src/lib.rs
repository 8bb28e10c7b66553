//! Debug files by build-id from debuginfod servers (`GET <url>/buildid/<id>/debuginfo`,
//! the protocol elfutils, gdb and systemd read, with servers named by `DEBUGINFOD_URLS`),
//! kept in a cache directory in the layout debuggers read as a debug directory:
//! `<cache>/.build-id/<first two hex digits>/<the rest>.debug`. A node adds the cache to
//! its analysis's debug directories; the endpoint reads it to name frames.
//!
//! # Guarantees
//! - A build-id reaches a path or a URL only when it is 4 to 128 lower-case hex digits.
//! - Every request has a timeout (the whole file included) and every answer a size bound
//!   ([`DEBUG_FILE_BYTES_MAX`]); a server that is down, slow or wrong costs the names it
//!   would have given, never an error to the caller.
//! - A file appears in the cache whole or not at all (written aside, then renamed).
//! - The cache stays within its bound in bytes: after each fetch the least recently used
//!   files go (a file found in the cache is marked used).
//! - The cache directory is the caller's: it must be a directory only its owner writes
//!   (a node's data dir); nothing here follows a link a user could plant there.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The largest debug file fetched or kept.
pub const DEBUG_FILE_BYTES_MAX: u64 = 2 << 30;

/// The servers in `DEBUGINFOD_URLS` (space-separated), as elfutils reads them.
pub fn urls_from_environment() -> Vec<String> {
    std::env::var("DEBUGINFOD_URLS")
        .map(|urls| urls.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// True for a build-id that may name a file or a URL.
pub fn is_build_id(text: &str) -> bool {
    (4..=128).contains(&text.len()) && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A client of some debuginfod servers with its cache.
pub struct Client {
    urls: Vec<String>,
    cache_dir: PathBuf,
    cache_bytes_max: u64,
    agent: ureq::Agent,
}

impl Client {
    /// A client of `urls` keeping at most `cache_bytes_max` bytes under `cache_dir`; each
    /// fetch may take `timeout`.
    pub fn new(
        urls: Vec<String>,
        cache_dir: PathBuf,
        cache_bytes_max: u64,
        timeout: Duration,
    ) -> Client {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout.max(Duration::from_millis(1))))
            .http_status_as_error(false)
            .build()
            .into();
        Client {
            urls,
            cache_dir,
            cache_bytes_max,
            agent,
        }
    }

    /// The cache: a debug directory (`.build-id/xx/….debug` inside).
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// Where the debug file of `build_id` is kept.
    pub fn cache_path(&self, build_id: &str) -> PathBuf {
        let (head, rest) = build_id.split_at(2);
        self.cache_dir
            .join(".build-id")
            .join(head)
            .join(format!("{rest}.debug"))
    }

    /// The debug file of `build_id`: from the cache, else fetched from the first server
    /// that has it; `None` when none has it (or none answers).
    pub fn debuginfo(&self, build_id: &str) -> Option<PathBuf> {
        if !is_build_id(build_id) {
            return None;
        }
        let path = self.cache_path(build_id);
        if path.is_file() {
            // Recently used: eviction goes by modification time.
            if let Ok(file) = std::fs::File::options().write(true).open(&path) {
                let _ = file.set_modified(SystemTime::now());
            }
            return Some(path);
        }
        for url in &self.urls {
            match self.fetch(url, build_id, &path) {
                Ok(true) => {
                    self.evict();
                    return Some(path);
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(url, build_id, %error, "debuginfod fetch failed"),
            }
        }
        None
    }

    /// Downloads one debug file into `into` (true), or learns the server has none (false).
    fn fetch(&self, url: &str, build_id: &str, into: &Path) -> Result<bool, String> {
        let address = format!("{}/buildid/{build_id}/debuginfo", url.trim_end_matches('/'));
        let mut answer = self
            .agent
            .get(&address)
            .call()
            .map_err(|error| format!("{address}: {error}"))?;
        match answer.status().as_u16() {
            200 => {}
            404 => return Ok(false),
            status => return Err(format!("{address}: status {status}")),
        }
        let directory = into.parent().expect("a cache path has a parent");
        std::fs::create_dir_all(directory).map_err(|error| error.to_string())?;
        let temporary = directory.join(format!(".{build_id}.{}.part", std::process::id()));
        let written = (|| -> std::io::Result<u64> {
            let mut file = std::fs::File::create(&temporary)?;
            let mut body = answer
                .body_mut()
                .with_config()
                .limit(DEBUG_FILE_BYTES_MAX + 1)
                .reader()
                .take(DEBUG_FILE_BYTES_MAX + 1);
            let written = std::io::copy(&mut body, &mut file)?;
            file.flush()?;
            Ok(written)
        })();
        match written {
            Ok(written) if written <= DEBUG_FILE_BYTES_MAX => {
                std::fs::rename(&temporary, into).map_err(|error| error.to_string())?;
                tracing::info!(
                    build_id,
                    bytes = written,
                    "fetched a debug file from debuginfod"
                );
                Ok(true)
            }
            Ok(_) => {
                let _ = std::fs::remove_file(&temporary);
                Err(format!("{address}: more than {DEBUG_FILE_BYTES_MAX} bytes"))
            }
            Err(error) => {
                let _ = std::fs::remove_file(&temporary);
                Err(format!("{address}: {error}"))
            }
        }
    }

    /// Removes the least recently used files until the cache fits its bound.
    pub fn evict(&self) {
        let Ok(heads) = std::fs::read_dir(self.cache_dir.join(".build-id")) else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = heads
            .filter_map(|head| std::fs::read_dir(head.ok()?.path()).ok())
            .flatten()
            .filter_map(|entry| {
                let path = entry.ok()?.path();
                let metadata = std::fs::symlink_metadata(&path).ok()?;
                (metadata.is_file() && path.extension().is_some_and(|ext| ext == "debug"))
                    .then_some((metadata.modified().ok()?, metadata.len(), path))
            })
            .collect();
        let mut total: u64 = files.iter().map(|file| file.1).sum();
        files.sort();
        for (_, size, path) in files {
            if total <= self.cache_bytes_max {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= size;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_build_ids_reach_a_path_or_a_url() {
        assert!(!is_build_id("../../etc/shadow"));
        assert!(!is_build_id("ABCD1234"));
        assert!(!is_build_id("ab"));
        assert!(is_build_id("0123abcd"));
    }

    #[test]
    fn the_cache_keeps_the_most_recently_used_files_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let client = Client::new(
            Vec::new(),
            dir.path().to_path_buf(),
            250,
            Duration::from_secs(1),
        );
        for (index, id) in ["aaaa", "bbbb", "cccc"].iter().enumerate() {
            let path = client.cache_path(id);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, vec![0u8; 100]).unwrap();
            let file = std::fs::File::options().write(true).open(&path).unwrap();
            file.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1000 + index as u64))
                .unwrap();
        }
        assert_eq!(
            client.cache_path("aaaa"),
            dir.path().join(".build-id/aa/aa.debug")
        );
        // "aaaa" is used again: it becomes the newest.
        assert_eq!(client.debuginfo("aaaa"), Some(client.cache_path("aaaa")));
        client.evict();
        assert!(client.cache_path("aaaa").exists());
        assert!(
            !client.cache_path("bbbb").exists(),
            "the least recently used went"
        );
        assert!(client.cache_path("cccc").exists());
    }

    #[test]
    fn a_server_that_is_down_costs_nothing_but_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let client = Client::new(
            vec![format!("http://127.0.0.1:{port}")],
            dir.path().to_path_buf(),
            1 << 20,
            Duration::from_secs(2),
        );
        assert_eq!(client.debuginfo("00112233"), None);
        assert!(!client.cache_path("00112233").exists());
    }
}
