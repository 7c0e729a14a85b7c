//! Reference in-memory event store (placeholder until implemented).
