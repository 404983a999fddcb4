//! The conformance suite through the schema registry: with nothing registered, a
//! `SchemaStore` keeps every guarantee of the store behind it.

factstore_testkit::conformance_tests!(async {
    let inner = std::sync::Arc::new(factstore_testkit::model::ModelStore::new())
        as std::sync::Arc<dyn factstore_core::EventStore>;
    let registry = std::sync::Arc::new(factstore_schemas::SchemaRegistry::in_memory());
    std::sync::Arc::new(factstore_schemas::SchemaStore::new(inner, registry))
        as std::sync::Arc<dyn factstore_core::EventStore>
});
