//! The cluster mesh: how the nodes of one cluster reach each other and send each problem
//! out once.
//!
//! - [`certs`]: the cluster's CA, node certificates and pseudonym key (`cluster init`,
//!   `cluster issue`).
//! - [`transport`]: QUIC with mutual TLS; a peer is who its certificate says.
//! - [`actor`]: the actor whose shell carries out what `protocol`'s driver releases
//!   (datagrams, the vote written before anything after it leaves, reads and uploads on a
//!   worker thread).
//! - [`report`]: the report a node hands the aggregator and a peer's log bundle, as chunk
//!   lists of the node's store.
//! - [`uploader`]: the aggregator's fenced upload to the endpoint, through its client.
//! - [`customer`]: customer mode, scrubbing every report before it leaves.
//!
//! Module arrows point one way: `actor` → `uploader` → `customer` → `report`, `certs`;
//! `transport` → `certs`. The mesh does not know the daemon: the daemon hands it its
//! configuration's parts ([`actor::NodeParts`]) and the store.

pub mod actor;
pub mod certs;
pub mod config;
pub mod customer;
pub mod report;
pub mod transport;
pub mod uploader;
