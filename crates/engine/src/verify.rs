//! Offline verification of a data folder.
