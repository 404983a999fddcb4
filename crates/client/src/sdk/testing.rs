//! [`AggregateTest`]: given events, when a command, then the new events or the refusal. No
//! server: it runs `apply` and `handle` directly, and checks that every event survives the
//! trip through its stored form (encode, then decode) so that a codec mistake fails here
//! rather than on the first load in production.

use std::fmt::Debug;

use serde_json::Value;

use super::aggregate::{Aggregate, DomainEvent};
use super::upcast::Upcasters;

/// A given/when/then test of aggregate `A`.
///
/// ```
/// # use factstore_client::sdk::{Aggregate, AggregateTest, DomainEvent};
/// # use serde::{Deserialize, Serialize};
/// # struct Counter;
/// # #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// # #[serde(tag = "event_type", content = "event_data")]
/// # enum Ev { Added { n: u32 } }
/// # impl DomainEvent for Ev {}
/// # #[derive(Debug, PartialEq, thiserror::Error)] #[error("too big")] struct TooBig;
/// # impl Aggregate for Counter {
/// #     const AGGREGATE_TYPE: &'static str = "Counter";
/// #     type State = u32; type Command = u32; type Event = Ev; type Error = TooBig;
/// #     fn apply(s: &mut u32, e: &Ev) { let Ev::Added { n } = e; *s += n; }
/// #     fn handle(s: &u32, c: u32) -> Result<Vec<Ev>, TooBig> { if s + c > 10 { Err(TooBig) } else { Ok(vec![Ev::Added { n: c }]) } }
/// # }
/// AggregateTest::<Counter>::given([Ev::Added { n: 4 }])
///     .when(5)
///     .then_events([Ev::Added { n: 5 }])
///     .then_state(|total| assert_eq!(*total, 9));
/// AggregateTest::<Counter>::given([Ev::Added { n: 8 }]).when(5).then_error(TooBig);
/// ```
pub struct AggregateTest<A: Aggregate> {
    given: Vec<A::Event>,
    state: A::State,
    upcasters: Upcasters,
}

impl<A: Aggregate> Debug for AggregateTest<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateTest")
            .field("given", &self.given)
            .field("state", &self.state)
            .finish()
    }
}

/// The outcome of [`AggregateTest::when`], to check with `then_*`.
pub struct AggregateOutcome<A: Aggregate> {
    state_before: A::State,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> Debug for AggregateOutcome<A>
where
    A::Error: Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AggregateOutcome")
            .field("result", &self.result)
            .finish()
    }
}

impl<A: Aggregate> AggregateTest<A> {
    /// The aggregate after `events` (none: a new aggregate). Each event is first encoded and
    /// decoded as a repository would store and read it.
    pub fn given(events: impl IntoIterator<Item = A::Event>) -> AggregateTest<A> {
        AggregateTest::given_with(Upcasters::new(), events)
    }

    /// A new aggregate, no events.
    pub fn new() -> AggregateTest<A> {
        AggregateTest::given([])
    }

    /// [`AggregateTest::given`] with upcasters, for [`AggregateTest::given_stored`].
    pub fn given_with(upcasters: Upcasters, events: impl IntoIterator<Item = A::Event>) -> AggregateTest<A> {
        let mut test = AggregateTest {
            given: Vec::new(),
            state: A::State::default(),
            upcasters,
        };
        for event in events {
            let event = round_trip(&event, &test.upcasters);
            A::apply(&mut test.state, &event);
            test.given.push(event);
        }
        test
    }

    /// Adds events in their stored form (event type, schema version, data), as old events
    /// written before the current schema would be read: upcast, decoded, applied.
    ///
    /// # Panics
    /// When the stored event does not upcast or decode, naming it.
    pub fn given_stored(mut self, event_type: &str, event_version: u32, data: Value) -> AggregateTest<A> {
        let (version, data) = self
            .upcasters
            .upcast(event_type, event_version, data)
            .unwrap_or_else(|e| panic!("given_stored: {e}"));
        let event = A::Event::decode(event_type, version, data)
            .unwrap_or_else(|e| panic!("given_stored: {event_type} v{event_version}: {e}"));
        A::apply(&mut self.state, &event);
        self.given.push(event);
        self
    }

    /// Decides `command` on the state the given events built.
    pub fn when(self, command: A::Command) -> AggregateOutcome<A> {
        let result = A::handle(&self.state, command);
        if let Ok(events) = &result {
            for event in events {
                round_trip(event, &self.upcasters);
            }
        }
        AggregateOutcome {
            state_before: self.state,
            result,
        }
    }
}

impl<A: Aggregate> Default for AggregateTest<A> {
    fn default() -> Self {
        AggregateTest::new()
    }
}

impl<A: Aggregate> AggregateOutcome<A> {
    /// Asserts the command was accepted with exactly `expected`, in order.
    ///
    /// # Panics
    /// With both lists, or with the refusal, when they differ.
    #[track_caller]
    pub fn then_events(self, expected: impl IntoIterator<Item = A::Event>) -> AggregateOutcome<A> {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match &self.result {
            Ok(events) => assert!(
                *events == expected,
                "the command caused other events\n  expected: {expected:?}\n       got: {events:?}"
            ),
            Err(error) => panic!("the command was refused ({error}); expected events {expected:?}"),
        }
        self
    }

    /// Asserts the command was accepted and caused no event.
    #[track_caller]
    pub fn then_no_events(self) -> AggregateOutcome<A> {
        self.then_events([])
    }

    /// Asserts the command was refused with `expected`.
    ///
    /// # Panics
    /// When it was accepted, or refused otherwise.
    #[track_caller]
    pub fn then_error(self, expected: A::Error) -> AggregateOutcome<A>
    where
        A::Error: PartialEq + Debug,
    {
        match &self.result {
            Ok(events) => {
                panic!("the command was accepted with {events:?}; expected the refusal {expected:?}")
            }
            Err(error) => assert!(
                *error == expected,
                "the command was refused otherwise\n  expected: {expected:?}\n       got: {error:?}"
            ),
        }
        self
    }

    /// Asserts the command was refused, and runs `check` on the error.
    #[track_caller]
    pub fn then_error_matches(self, check: impl FnOnce(&A::Error) -> bool) -> AggregateOutcome<A> {
        match &self.result {
            Ok(events) => panic!("the command was accepted with {events:?}; expected a refusal"),
            Err(error) => assert!(check(error), "the refusal is not the one expected: {error}"),
        }
        self
    }

    /// Runs `check` on the state after the new events (the state before, after a refusal).
    pub fn then_state(self, check: impl FnOnce(&A::State)) -> AggregateOutcome<A> {
        let mut state = self.state_before.clone();
        if let Ok(events) = &self.result {
            for event in events {
                A::apply(&mut state, event);
            }
        }
        check(&state);
        self
    }

    /// The new events or the refusal, to inspect by hand.
    pub fn into_result(self) -> Result<Vec<A::Event>, A::Error> {
        self.result
    }
}

/// `event` after encoding and decoding, which must give it back.
#[track_caller]
fn round_trip<E: DomainEvent>(event: &E, upcasters: &Upcasters) -> E {
    let (event_type, data) = event
        .encode()
        .unwrap_or_else(|e| panic!("{event:?} cannot be stored: {e}"));
    let (version, data) = upcasters
        .upcast(&event_type, event.event_version(), data)
        .unwrap_or_else(|e| panic!("{event:?}: {e}"));
    let back = E::decode(&event_type, version, data.clone())
        .unwrap_or_else(|e| panic!("{event:?} is stored as {event_type} {data} but does not read back: {e}"));
    assert!(
        back == *event,
        "{event:?} is stored as {event_type} {data} and reads back as {back:?}"
    );
    back
}
