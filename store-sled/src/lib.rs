//! Durable embedded EventStore of fleetops on sled (being built).
