//! The conformance suite of `factstore-testkit` against PostgreSQL, each case in a fresh schema.

mod common;

use common::SchemaStore;

factstore_testkit::conformance_tests!(optional SchemaStore::open_dyn());

/// The suite again with every group planned without looking its ids up first, the way large
/// groups are written: the idempotency rule must still come first.
mod without_id_lookups {
    use super::common::SchemaStore;

    factstore_testkit::conformance_tests!(optional SchemaStore::open_dyn_without_id_lookups());
}
