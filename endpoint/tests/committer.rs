//! The committer alone, with no HTTP server in front: the fences it keeps in its own
//! transaction hold even for jobs that no early check of the server has looked at (two
//! uploads that both passed the server's check before either was recorded).

mod common;

use std::sync::Arc;

use common::*;
use crashmesh_endpoint::EndpointError;
use crashmesh_endpoint::config::StorageConfig;
use crashmesh_endpoint::recording::metrics::Metrics;
use crashmesh_endpoint::recording::webhook::{WebhookConfig, Webhooks};
use crashmesh_endpoint::recording::{Committer, IngestContext, open_database};
use crashmesh_endpoint::storage::blobs::Blobs;
use crashmesh_protocol::report::{IncidentUpdate, ReportManifest};

const T0: u64 = 1_790_000_000_000;

struct Recording {
    committer: Committer,
    runtime: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Recording {
    fn open() -> Recording {
        let dir = tempfile::tempdir().unwrap();
        let (db, journal) = open_database(dir.path()).unwrap();
        let db = Arc::new(db);
        let blobs = Blobs::open(&StorageConfig::default(), dir.path(), db.clone()).unwrap();
        let metrics = Arc::new(Metrics::default());
        let context = IngestContext {
            blobs,
            public_url: "http://endpoint.test".into(),
            webhooks: Webhooks::start(&WebhookConfig::default(), metrics.clone()),
            metrics,
            checkpoint_interval: std::time::Duration::from_secs(60),
        };
        let committer = Committer::start(db, journal, Arc::from(Vec::new()), context).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        Recording {
            committer,
            runtime,
            _dir: dir,
        }
    }

    fn complete(&self, manifest: &ReportManifest) -> Result<bool, EndpointError> {
        self.runtime
            .block_on(self.committer.complete(Arc::new(manifest.clone()), None))
            .map(|reply| reply.known)
    }

    fn update(
        &self,
        manifest: &ReportManifest,
        term: u64,
        node: &str,
    ) -> Result<(), EndpointError> {
        let update = IncidentUpdate {
            report_id: manifest.report_id.clone(),
            cluster_id: manifest.cluster_id.clone(),
            term,
            signature: manifest.signature.clone(),
            incidents: vec![incident(node, &format!("{node}-entry"), T0 + 5, None)],
        };
        self.runtime
            .block_on(self.committer.update(update))
            .map(|_| ())
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        self.committer.stop();
    }
}

fn report_of_term(cluster: &str, term: u64, seed: &str) -> ReportManifest {
    manifest(
        cluster,
        term,
        seed,
        problem(&format!("v1:core:{seed}"), seed),
        vec![incident("node-1", seed, T0, None)],
        Vec::new(),
    )
}

#[test]
fn a_lower_term_than_one_recorded_is_refused_in_the_transaction() {
    let recording = Recording::open();
    assert_eq!(
        recording.complete(&report_of_term("c1", 3, "a")).ok(),
        Some(false)
    );
    // Term 2 passed no early check here: the committer alone refuses it.
    match recording.complete(&report_of_term("c1", 2, "b")) {
        Err(EndpointError::StaleTerm {
            term: 2,
            highest: 3,
            ..
        }) => {}
        other => panic!("a stale report was not refused: {other:?}"),
    }
    let stored = report_of_term("c1", 3, "a");
    match recording.update(&stored, 2, "node-2") {
        Err(EndpointError::StaleTerm {
            term: 2,
            highest: 3,
            ..
        }) => {}
        other => panic!("a stale update was not refused: {other:?}"),
    }
    // The same term, and the next, go through; another cluster's terms are its own.
    recording.update(&stored, 3, "node-3").unwrap();
    assert_eq!(
        recording.complete(&report_of_term("c1", 4, "c")).ok(),
        Some(false)
    );
    assert_eq!(
        recording.complete(&report_of_term("c2", 1, "d")).ok(),
        Some(false)
    );
}

#[test]
fn a_term_too_far_ahead_and_another_clusters_report_id_are_refused_in_the_transaction() {
    let recording = Recording::open();
    assert_eq!(
        recording.complete(&report_of_term("c1", 1, "a")).ok(),
        Some(false)
    );
    let far = crashmesh_endpoint::recording::record::TERM_STEP_MAX + 2;
    match recording.complete(&report_of_term("c1", far, "b")) {
        Err(EndpointError::TermTooFar { .. }) => {}
        other => panic!("a term far ahead was not refused: {other:?}"),
    }
    // The refused term did not move the fence: term 1 still goes through.
    assert_eq!(
        recording.complete(&report_of_term("c1", 1, "c")).ok(),
        Some(false)
    );
    // c2 sends c1's report id: refused, and c1's report is still c1's.
    let mut foreign = report_of_term("c2", 1, "a");
    foreign.report_id = report_of_term("c1", 1, "a").report_id;
    match recording.complete(&foreign) {
        Err(EndpointError::ForeignReport { .. }) => {}
        other => panic!("another cluster's report id was not refused: {other:?}"),
    }
    match recording.update(&foreign, 1, "node-9") {
        Err(EndpointError::ForeignReport { .. }) => {}
        other => panic!("another cluster's update was not refused: {other:?}"),
    }
    assert_eq!(
        recording.complete(&report_of_term("c1", 1, "a")).ok(),
        Some(true)
    );
}
