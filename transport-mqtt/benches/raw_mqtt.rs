//! Raw-MQTT baseline (placeholder until the bench lands).

fn main() {}
