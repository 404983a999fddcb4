//! The conformance suite of `factstore-testkit` against PostgreSQL, each case in a fresh schema.

mod common;

use common::SchemaStore;

factstore_testkit::conformance_tests!(optional SchemaStore::open_dyn());
