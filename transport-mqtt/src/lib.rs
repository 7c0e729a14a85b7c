//! MQTT 5 wire protocol, service-side binding and device SDK of fleetops (being built).
