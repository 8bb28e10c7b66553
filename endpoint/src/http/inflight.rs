//! Request bodies being read: bounded in bytes per cluster and over all clusters.
//!
//! A body is read into memory (a manifest up to `manifest_bytes_max`) and a slow client
//! holds that memory until its body's deadline. So before a body is read, its bytes (its
//! `Content-Length`, else the route's limit) are reserved against the cluster's budget and
//! the global one; a request that does not fit is refused (429) without reading, and the
//! reservation is given back when the request's handler is done with the body.
//!
//! Invariant: the bytes reserved never exceed `cluster_bytes_max` for a cluster nor
//! `bytes_max` over all; a reservation is released exactly once (on drop).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::EndpointError;

/// The bytes reserved, per cluster and in total.
#[derive(Default)]
struct Reserved {
    clusters: HashMap<String, usize>,
    total: usize,
}

/// The budget of body bytes being read.
pub struct BodyBudget {
    reserved: Mutex<Reserved>,
    cluster_bytes_max: usize,
    bytes_max: usize,
}

/// Bytes reserved for one body; given back on drop.
pub struct Reservation<'a> {
    budget: &'a BodyBudget,
    cluster: String,
    bytes: usize,
}

impl BodyBudget {
    /// At most `cluster_bytes_max` per cluster and `bytes_max` over all.
    pub fn new(cluster_bytes_max: usize, bytes_max: usize) -> BodyBudget {
        BodyBudget {
            reserved: Mutex::new(Reserved::default()),
            cluster_bytes_max,
            bytes_max,
        }
    }

    /// Reserves `bytes` for a body of `cluster`; 429 when it does not fit.
    pub fn reserve(&self, cluster: &str, bytes: usize) -> Result<Reservation<'_>, EndpointError> {
        let mut reserved = self.reserved.lock().unwrap();
        let of_cluster = reserved.clusters.get(cluster).copied().unwrap_or(0);
        if of_cluster + bytes > self.cluster_bytes_max {
            return Err(EndpointError::TooMany(format!(
                "cluster {cluster:?} is sending {of_cluster} body bytes already (at most {})",
                self.cluster_bytes_max
            )));
        }
        if reserved.total + bytes > self.bytes_max {
            return Err(EndpointError::TooMany(format!(
                "{} body bytes are being received (at most {})",
                reserved.total, self.bytes_max
            )));
        }
        *reserved.clusters.entry(cluster.to_string()).or_insert(0) += bytes;
        reserved.total += bytes;
        Ok(Reservation {
            budget: self,
            cluster: cluster.to_string(),
            bytes,
        })
    }

    /// Bytes reserved now, over all clusters.
    pub fn reserved_bytes(&self) -> usize {
        self.reserved.lock().unwrap().total
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut reserved = self.budget.reserved.lock().unwrap();
        reserved.total -= self.bytes;
        if let Some(of_cluster) = reserved.clusters.get_mut(&self.cluster) {
            *of_cluster -= self.bytes;
            if *of_cluster == 0 {
                reserved.clusters.remove(&self.cluster);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_over_its_bytes_waits_while_another_sends_and_drops_give_back() {
        let budget = BodyBudget::new(100, 150);
        let first = budget.reserve("a", 60).unwrap();
        assert!(budget.reserve("a", 50).is_err(), "a's budget");
        let other = budget.reserve("b", 80).unwrap();
        assert!(budget.reserve("c", 20).is_err(), "the global budget");
        drop(first);
        assert_eq!(budget.reserved_bytes(), 80);
        let again = budget.reserve("a", 70).unwrap();
        drop((other, again));
        assert_eq!(budget.reserved_bytes(), 0);
    }
}
