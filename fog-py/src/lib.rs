//! The Python module `fog`.
