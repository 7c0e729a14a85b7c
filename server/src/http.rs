//! The HTTP API (axum, JSON) served by `fleetops serve`.
