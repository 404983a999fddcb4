//! The embedded factstore storage engine.

pub mod error;
pub mod index;
pub mod io;

pub use error::{EngineError, Result};
