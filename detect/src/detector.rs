//! What the detectors share: the [`Detector`] shape and the thin actor that runs one on
//! the blocking pool ([`PollActor`]), and small durable state files.
//!
//! # Invariants
//! - A state file is replaced whole and durably (temp + fsync + rename + directory
//!   fsync): after a crash it holds the old state or the new one, never a mix.
//! - A detector spools a problem *before* it saves the state that says "done", and the
//!   entry id is derived from what was found (never from the time), so a crash in between
//!   replays the same entry id, which the store records once (report ids are idempotent).
//! - A poller never runs on an actor's thread and never runs twice at once.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crashmesh_capture::clock::Clock;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest state file a detector reads back.
pub const STATE_FILE_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// Why a state file could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// Read a JSON state file; `None` when it is missing. A damaged or oversized file is
/// logged and treated as missing (the detector then starts over, which the idempotent
/// entry ids make harmless).
pub fn load_state<T: DeserializeOwned>(path: &Path) -> Option<T> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read a detector state file");
            return None;
        }
    };
    let mut bytes = Vec::new();
    if let Err(error) = file.take(STATE_FILE_BYTES_MAX + 1).read_to_end(&mut bytes) {
        tracing::warn!(path = %path.display(), %error, "cannot read a detector state file");
        return None;
    }
    if bytes.len() as u64 > STATE_FILE_BYTES_MAX {
        tracing::warn!(path = %path.display(), "detector state file too large; starting over");
        return None;
    }
    match serde_json::from_slice(&bytes) {
        Ok(state) => Some(state),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "damaged detector state file; starting over");
            None
        }
    }
}

/// Replace a JSON state file durably.
pub fn save_state<T: Serialize>(path: &Path, state: &T) -> Result<(), StateError> {
    let io_error = |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = serde_json::to_vec(state).expect("state serializes");
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    {
        let mut file = File::create(&temporary).map_err(io_error)?;
        file.write_all(&bytes).map_err(io_error)?;
        file.sync_all().map_err(io_error)?;
    }
    std::fs::rename(&temporary, path).map_err(io_error)?;
    let directory = path.parent().unwrap_or(Path::new("."));
    File::open(directory)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error)
}

/// A file's modification time, unix milliseconds (0 when unknown).
pub fn modified_ms(metadata: &std::fs::Metadata) -> u64 {
    metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |duration| duration.as_millis() as u64)
}

/// Expand glob patterns into existing paths, sorted; a bad pattern is logged and skipped.
pub fn expand_globs(patterns: &[String]) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for pattern in patterns {
        match glob::glob(pattern) {
            Ok(found) => paths.extend(found.filter_map(|path| path.ok())),
            Err(error) => tracing::warn!(pattern, %error, "bad glob pattern in the configuration"),
        }
    }
    paths.sort();
    paths.dedup();
    paths
}

/// The shape every polled detector has: a look at the machine, on a beat, that spools
/// what it found (through `crashmesh_capture::spool::write_found`) before it remembers
/// having seen it.
pub trait Detector: Send + Unpin + 'static {
    /// The detector's name in logs.
    const NAME: &'static str;
    /// Look once; `now_ms` is the wall clock.
    fn poll(&mut self, now_ms: u64);
    /// True once the detector has nothing more to do (a harvest of earlier boots): it is
    /// not polled again.
    fn finished(&self) -> bool {
        false
    }
}

/// A thin actor that runs a [`Detector`] every `interval` on the blocking pool, one poll
/// at a time (the detector travels to the pool and back, so it needs no lock).
pub struct PollActor<P: Detector> {
    poller: Option<P>,
    interval: std::time::Duration,
    clock: Arc<dyn Clock>,
}

impl<P: Detector> PollActor<P> {
    pub fn new(poller: P, interval: std::time::Duration, clock: Arc<dyn Clock>) -> PollActor<P> {
        PollActor {
            poller: Some(poller),
            interval,
            clock,
        }
    }

    fn tick(&mut self, context: &mut actix::Context<Self>) {
        use actix::{ActorFutureExt, AsyncContext};
        let Some(mut poller) = self.poller.take() else {
            return; // The previous poll is still running.
        };
        let clock = self.clock.clone();
        let pass = tokio::task::spawn_blocking(move || {
            poller.poll(clock.now_ms());
            poller
        });
        context.spawn(
            actix::fut::wrap_future(pass).map(|result, actor: &mut PollActor<P>, context| {
                use actix::ActorContext;
                // One line per finished poll (at trace): what tests wait on to know a
                // detector has looked since they changed the machine.
                tracing::trace!(detector = P::NAME, "poll done");
                match result {
                    Ok(poller) if poller.finished() => context.stop(),
                    Ok(poller) => actor.poller = Some(poller),
                    Err(error) => {
                        tracing::error!(detector = P::NAME, %error, "detector poll panicked; the detector stops");
                        context.stop();
                    }
                }
            }),
        );
    }
}

impl<P: Detector> actix::Actor for PollActor<P> {
    type Context = actix::Context<Self>;

    fn started(&mut self, context: &mut Self::Context) {
        use actix::AsyncContext;
        self.tick(context);
        context.run_interval(self.interval, |actor, context| actor.tick(context));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_files_round_trip_and_damage_reads_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load_state::<Vec<String>>(&path), None);
        save_state(&path, &vec!["a".to_string()]).unwrap();
        assert_eq!(
            load_state::<Vec<String>>(&path),
            Some(vec!["a".to_string()])
        );
        assert!(!dir.path().join("state.json.tmp").exists());
        std::fs::write(&path, b"{damaged").unwrap();
        assert_eq!(load_state::<Vec<String>>(&path), None);
    }
}
