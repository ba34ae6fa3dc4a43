//! Entity ids: one newtype per entity, so a device id cannot be passed where an artifact
//! id is expected.
//!
//! An id is opaque text. Updraft generates new ones as UUIDv7 (`new()`), in the same
//! hyphenated form as always; ids that come from outside (a path, a body, a stored row) are
//! taken as they are written (`From<&str>`, `FromStr`): an id that names nothing is the
//! service's "not found", not a malformed request, exactly as when ids were strings.
//! Serialised, an id is its text (`#[serde(transparent)]`).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

macro_rules! ids {
    ($($(#[$doc:meta])* $name:ident;)*) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A new id (UUIDv7 text, time-ordered).
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7().to_string())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// An id reads as its text wherever a `&str` is taken (formatting, topics, SQL binds).
        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = Infallible;

            fn from_str(text: &str) -> Result<Self, Infallible> {
                Ok(Self(text.to_string()))
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                Self(text.to_string())
            }
        }

        impl From<String> for $name {
            fn from(text: String) -> Self {
                Self(text)
            }
        }

        impl From<&String> for $name {
            fn from(text: &String) -> Self {
                Self(text.clone())
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl From<&$name> for String {
            fn from(id: &$name) -> String {
                id.0.clone()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    )*};
}

ids! {
    /// A device (`device.id`).
    DeviceId;
    /// A firmware build (`artifact.id`).
    ArtifactId;
    /// A release: a version of a product and its builds (`release.id`).
    ReleaseId;
    /// A rollout of a release (`rollout.id`).
    RolloutId;
    /// One update attempt of one device (`update_attempt.id`).
    AttemptId;
    /// A static device group (`device_group.id`).
    GroupId;
    /// A stored asset version (`asset.id`).
    AssetId;
    /// A command sent to a device (`command.id`).
    CommandId;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_hyphenated_uuid_v7_text() {
        let id = DeviceId::new();
        let uuid = uuid::Uuid::try_parse(id.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(id.as_str(), uuid.hyphenated().to_string());
        assert_ne!(DeviceId::new(), id);
    }

    #[test]
    fn text_round_trips_through_parse_and_display() {
        for text in ["0190f3a4-7b1c-7d2e-8f00-123456789abc", "legacy-id", ""] {
            let id: ArtifactId = text.parse().unwrap();
            assert_eq!(id.to_string(), text);
            assert_eq!(id.as_ref() as &str, text);
            assert_eq!(String::from(id.clone()), text);
            assert_eq!(ArtifactId::from(text), id);
        }
    }

    #[test]
    fn serde_is_the_bare_text() {
        let id = RolloutId::from("r-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"r-1\"");
        assert_eq!(serde_json::from_str::<RolloutId>("\"r-1\"").unwrap(), id);
        assert!(serde_json::from_str::<RolloutId>("1").is_err());
        let ids = vec![ReleaseId::from("a"), ReleaseId::from("b")];
        assert_eq!(serde_json::to_string(&ids).unwrap(), r#"["a","b"]"#);
    }
}
