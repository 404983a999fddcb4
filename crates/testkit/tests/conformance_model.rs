//! The conformance suite against the reference model: the model is the suite's first
//! implementation, so a failure here is a bug in one of the two.

factstore_testkit::conformance_tests!(async {
    std::sync::Arc::new(factstore_testkit::model::ModelStore::new())
        as std::sync::Arc<dyn factstore_core::EventStore>
});
