//! JVM fatal error logs (being written).
use crashmesh_protocol::model::Problem;
/// The problem of an hs_err file.
pub fn parse_hs_err(_text: &str) -> Option<Problem> {
    None
}
