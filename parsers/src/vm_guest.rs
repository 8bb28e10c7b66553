//! VM guest logs (being written).
use crashmesh_protocol::model::Problem;
/// Guest panics in a domain log.
pub fn parse_vm_guest_log(_domain: &str, _text: &str) -> Vec<Problem> {
    Vec::new()
}
