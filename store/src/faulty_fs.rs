//! A simulated file system that injects faults (being written).

/// Which faults to inject.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig;
/// How many faults were injected, by kind.
#[derive(Clone, Debug, Default)]
pub struct FaultCounts;
/// A simulated disk.
#[derive(Debug, Default)]
pub struct FaultyFs;
