//! The target state an operator sets and a device runs, and the current state a device
//! reports, in the JSON shape of the platform pinion replaces. Every struct keeps the
//! fields it does not know in `extra`, so a dashboard's own keys round-trip unchanged.

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Apps → services → images, for one device.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetState {
    #[serde(default)]
    pub apps: Apps,
    #[serde(default)]
    pub config: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Apps as the operator sent them: an object keyed by appId, or an array.
pub type Apps = Keyed<App>;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct App {
    #[serde(rename = "appId", default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<Value>,
    #[serde(rename = "appName", default, skip_serializing_if = "Option::is_none")]
    pub app_name: Option<String>,
    #[serde(default)]
    pub services: Keyed<Service>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    #[serde(rename = "serviceId", default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<Value>,
    #[serde(rename = "serviceName", default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<String>,
    #[serde(rename = "imageName", default, skip_serializing_if = "Option::is_none")]
    pub image_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
    #[serde(rename = "imageResolution", default, skip_serializing_if = "Option::is_none")]
    pub image_resolution: Option<ImageResolution>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// How a service's image was pinned when the target was stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageResolution {
    /// The reference as the operator wrote it (`nginx:latest`).
    pub requested: String,
    /// The digest the image is pinned to; `None` for a fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    pub status: ResolutionStatus,
    /// When the registry gave `digest`: the time of the request for `resolved`, earlier
    /// for `cached` (`cacheAge` seconds before it), the time of the request otherwise.
    #[serde(rename = "resolvedAt")]
    pub resolved_at: String,
    /// Why the registry could not be asked (fallback; cached when it could not answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds between the registry giving the digest used and this request (cached only).
    #[serde(rename = "cacheAge", default, skip_serializing_if = "Option::is_none")]
    pub cache_age: Option<u64>,
    /// After a rollback: the digest rolled away from, which following the tag does not
    /// bring back; a later push (another digest) does.
    #[serde(rename = "rolledBackFrom", default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_from: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResolutionStatus {
    /// The registry was asked during this request and answered with a digest.
    Resolved,
    /// The request already carried a digest, or named a local image ID: nobody was asked.
    Pinned,
    /// The digest is the last one the registry gave (`cacheAge` seconds ago), not asked
    /// again: the registry could not answer (`error` says why), or the server runs with a
    /// `--cache-ttl` longer than that age.
    Cached,
    /// The registry could not be asked or refused, and no digest is known; the tag is kept.
    Fallback,
}

/// What a device reports about itself (`PATCH /device/state`), kept as sent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CurrentState {
    #[serde(default)]
    pub apps: Value,
    #[serde(default)]
    pub config: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A collection the wire format allows both as `{"<id>": item}` and as `[item]`; the
/// shape received is the shape sent back.
#[derive(Debug, Clone, PartialEq)]
pub enum Keyed<T> {
    Map(BTreeMap<String, T>),
    List(Vec<T>),
}

impl<T> Default for Keyed<T> {
    fn default() -> Self {
        Keyed::Map(BTreeMap::new())
    }
}

impl<T> Keyed<T> {
    /// Items with their key: the map key, or the index for a list.
    pub fn iter(&self) -> Box<dyn Iterator<Item = (String, &T)> + '_> {
        match self {
            Keyed::Map(m) => Box::new(m.iter().map(|(k, v)| (k.clone(), v))),
            Keyed::List(l) => Box::new(l.iter().enumerate().map(|(i, v)| (i.to_string(), v))),
        }
    }
    pub fn iter_mut(&mut self) -> Box<dyn Iterator<Item = (String, &mut T)> + '_> {
        match self {
            Keyed::Map(m) => Box::new(m.iter_mut().map(|(k, v)| (k.clone(), v))),
            Keyed::List(l) => Box::new(l.iter_mut().enumerate().map(|(i, v)| (i.to_string(), v))),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Keyed::Map(m) => m.len(),
            Keyed::List(l) => l.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T: Serialize> Serialize for Keyed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Keyed::Map(m) => m.serialize(s),
            Keyed::List(l) => l.serialize(s),
        }
    }
}

impl<'de, T: for<'a> Deserialize<'a>> Deserialize<'de> for Keyed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| {
                    T::deserialize(v).map(|t| (k.clone(), t)).map_err(|e| de::Error::custom(format!("{k}: {e}")))
                })
                .collect::<Result<_, _>>()
                .map(Keyed::Map),
            Value::Array(l) => l
                .into_iter()
                .enumerate()
                .map(|(i, v)| T::deserialize(v).map_err(|e| de::Error::custom(format!("[{i}]: {e}"))))
                .collect::<Result<_, _>>()
                .map(Keyed::List),
            Value::Null => Ok(Keyed::default()),
            other => {
                Err(de::Error::custom(format!("expected an object keyed by id or an array, found {}", kind(&other))))
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip_unchanged() {
        let input = serde_json::json!({
            "apps": {"1001": {"appId": 1001, "appName": "web", "dashboardColor": "red",
                "services": [{"serviceId": 1, "serviceName": "nginx", "imageName": "nginx:latest",
                    "config": {"image": "nginx:latest", "ports": ["80:80"]}, "x-note": {"a": [1, 2]}}]}},
            "config": {"RESIN_SUPERVISOR_POLL_INTERVAL": "60000"},
            "fleetTag": "eu"
        });
        let state: TargetState = serde_json::from_value(input.clone()).unwrap();
        assert_eq!(serde_json::to_value(&state).unwrap(), input);
    }

    #[test]
    fn apps_keep_the_shape_they_came_in() {
        let list = serde_json::json!({"apps": [{"appId": 1, "services": {"7": {"serviceName": "s"}}}], "config": {}});
        let state: TargetState = serde_json::from_value(list.clone()).unwrap();
        assert!(matches!(state.apps, Keyed::List(_)));
        assert_eq!(serde_json::to_value(&state).unwrap(), list);
    }

    #[test]
    fn apps_of_the_wrong_type_are_refused_with_a_reason() {
        let err = serde_json::from_str::<TargetState>(r#"{"apps": "web"}"#).unwrap_err();
        assert!(err.to_string().contains("expected an object keyed by id or an array"), "{err}");
        let err =
            serde_json::from_str::<TargetState>(r#"{"apps": {"1": {"services": [{"imageName": 5}]}}}"#).unwrap_err();
        assert!(err.to_string().contains("1: [0]"), "{err}");
    }
}
