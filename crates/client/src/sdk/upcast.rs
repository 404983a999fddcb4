//! [`Upcasters`]: client-side schema evolution. Each function takes `event_data` of one
//! `(event_type, event_version)` to the next version; reading chains them up to the newest.
//!
//! The server can upcast too (`PUT /v1/upcasters/...`, declarative operations); these hooks
//! are for rewrites that need code, or for a store whose upcasters the application does not
//! manage. Both compose: the server's output version is where the client's chain starts.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use super::aggregate::CodecError;

type Upcast = Arc<dyn Fn(Value) -> Result<Value, String> + Send + Sync>;

/// The registered upcasting functions, by event type and the version they start from.
///
/// ```
/// use factstore_client::sdk::Upcasters;
/// use serde_json::json;
///
/// // v1 deposits had no currency; v2 added it, USD for old events.
/// let upcasters = Upcasters::new().register("MoneyDeposited", 1, |mut data| {
///     data["currency"] = json!("USD");
///     Ok(data)
/// });
/// let (version, data) = upcasters.upcast("MoneyDeposited", 1, json!({"amount": 500})).unwrap();
/// assert_eq!((version, data), (2, json!({"amount": 500, "currency": "USD"})));
/// ```
#[derive(Clone, Default)]
pub struct Upcasters {
    steps: HashMap<(String, u32), Upcast>,
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut steps: Vec<_> = self.steps.keys().collect();
        steps.sort();
        f.debug_struct("Upcasters").field("steps", &steps).finish()
    }
}

impl Upcasters {
    pub fn new() -> Upcasters {
        Upcasters::default()
    }

    /// Registers the step from `from_version` to `from_version + 1` of `event_type`
    /// (replacing one registered before). An `Err` names what is wrong with the data.
    pub fn register(
        mut self,
        event_type: impl Into<String>,
        from_version: u32,
        step: impl Fn(Value) -> Result<Value, String> + Send + Sync + 'static,
    ) -> Upcasters {
        self.steps
            .insert((event_type.into(), from_version), Arc::new(step));
        self
    }

    /// `data` of `event_type` at `version`, through every registered step: the version
    /// reached and the data.
    pub fn upcast(
        &self,
        event_type: &str,
        version: u32,
        mut data: Value,
    ) -> Result<(u32, Value), CodecError> {
        let mut version = version;
        // Each step raises the version by one and there are finitely many steps, so this ends.
        while let Some(step) = self.steps.get(&(event_type.to_owned(), version)) {
            data = step(data).map_err(|e| {
                CodecError::new(format!(
                    "cannot upcast {event_type} from version {version} to {}: {e}",
                    version + 1
                ))
            })?;
            if !data.is_object() {
                return Err(CodecError::new(format!(
                    "upcasting {event_type} from version {version} gave {data}, not a JSON object"
                )));
            }
            version = version.checked_add(1).ok_or_else(|| {
                CodecError::new(format!("{event_type} cannot be upcast past version {version}"))
            })?;
        }
        Ok((version, data))
    }

    /// Whether no step is registered.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_chain_and_stop_where_none_is_registered() {
        let upcasters = Upcasters::new()
            .register("Deposited", 1, |mut d| {
                d["currency"] = json!("USD");
                Ok(d)
            })
            .register("Deposited", 2, |d| {
                let amount = d["amount"].as_i64().ok_or("amount is not an integer")?;
                Ok(json!({"amount_cents": amount * 100, "currency": d["currency"]}))
            });
        assert_eq!(
            upcasters.upcast("Deposited", 1, json!({"amount": 5})).unwrap(),
            (3, json!({"amount_cents": 500, "currency": "USD"}))
        );
        assert_eq!(
            upcasters
                .upcast("Deposited", 3, json!({"amount_cents": 1}))
                .unwrap()
                .0,
            3
        );
        assert_eq!(upcasters.upcast("Other", 1, json!({})).unwrap(), (1, json!({})));
        let error = upcasters
            .upcast("Deposited", 2, json!({"amount": "five"}))
            .unwrap_err();
        assert_eq!(
            error.message,
            "cannot upcast Deposited from version 2 to 3: amount is not an integer"
        );
        let broken = Upcasters::new().register("X", 1, |_| Ok(json!(1)));
        assert!(broken.upcast("X", 1, json!({})).is_err());
    }
}
