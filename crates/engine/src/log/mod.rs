//! The log: segment files of frames of records, and reading them.

pub mod format;
pub mod reader;
pub mod recovery;
pub mod writer;
