//! Benchmarks of fog against peer tools.
