//! Examples of fogcore as a library; see `examples/`.
