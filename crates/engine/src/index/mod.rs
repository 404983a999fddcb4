//! The engine's indexes.

pub mod bloom;
pub mod run;
