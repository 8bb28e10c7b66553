//! Python tracebacks (being written).
use crashmesh_protocol::model::Problem;
/// Every traceback in `text`.
pub fn parse_python_tracebacks(_text: &str) -> Vec<Problem> {
    Vec::new()
}
