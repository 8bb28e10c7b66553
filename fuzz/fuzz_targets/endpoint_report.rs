//! Manifests and incident updates as an uploader sends them to `POST /api/v1/reports` and
//! `POST /api/v1/incidents`: no panic; whatever the endpoint accepts survives a JSON round
//! trip unchanged, its chunk accounting agrees with itself, and the component the
//! uninteresting rules match on can be read from it.
#![no_main]

use crashmesh_protocol::report::{IncidentUpdate, ReportManifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(manifest) = serde_json::from_slice::<ReportManifest>(data)
        && manifest.validate().is_ok()
    {
        let again: ReportManifest =
            serde_json::from_slice(&serde_json::to_vec(&manifest).expect("a manifest encodes"))
                .expect("an encoded manifest decodes");
        assert_eq!(again, manifest);
        assert_eq!(manifest.chunk_ids().len(), manifest.chunk_count());
        let _ = crashmesh_endpoint::recording::rules::component(&manifest.problem);
    }
    if let Ok(update) = serde_json::from_slice::<IncidentUpdate>(data)
        && update.validate().is_ok()
    {
        let again: IncidentUpdate =
            serde_json::from_slice(&serde_json::to_vec(&update).expect("an update encodes"))
                .expect("an encoded update decodes");
        assert_eq!(again, update);
    }
});
