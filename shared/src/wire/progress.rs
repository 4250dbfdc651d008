//! Fanout progress (contract v1): JSON a fanout replica publishes on
//! `<prefix>:fanout:progress` after each committed batch (and when idle), saying that every
//! publish-stream entry up to `upto` has been applied to the topics of the partitions it lists.
//!
//! Gateways use it to deliver in publish order although several replicas publish concurrently:
//! a message is held until every partition is known to be done up to its source id, because
//! then every earlier message (of any partition) has already reached the gateway (Redis delivers
//! a subscriber's messages in the order they were published, and the replica publishes this
//! only after its batch's envelopes). See `docs/fanout.md`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::StreamId;

/// The progress format version this code writes and reads.
pub const PROGRESS_VERSION: u8 = 1;

/// "Partitions `owned` (of `partitions`) are done up to entry `upto`."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub v: u8,
    /// The replica that sent it (for logs).
    pub replica: String,
    /// `FANOUT_PARTITIONS` of the sender. A receiver that knew another count starts over.
    pub partitions: u16,
    /// The partitions this statement covers.
    pub owned: Vec<u16>,
    /// Every entry up to and including this id is done in those partitions.
    #[serde(serialize_with = "id_text", deserialize_with = "id_from_text")]
    pub upto: StreamId,
}

#[derive(Debug, thiserror::Error)]
pub enum ProgressError {
    #[error("malformed progress message: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported progress version {0}")]
    Version(u8),
}

impl Progress {
    pub fn new(replica: &str, partitions: u16, owned: Vec<u16>, upto: StreamId) -> Self {
        Self {
            v: PROGRESS_VERSION,
            replica: replica.to_owned(),
            partitions,
            owned,
            upto,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings, integers and a list of integers always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProgressError> {
        let progress: Self = serde_json::from_slice(bytes)?;
        if progress.v != PROGRESS_VERSION {
            return Err(ProgressError::Version(progress.v));
        }
        Ok(progress)
    }
}

fn id_text<S: Serializer>(id: &StreamId, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(id)
}

fn id_from_text<'de, D: Deserializer<'de>>(d: D) -> Result<StreamId, D::Error> {
    let text = String::deserialize(d)?;
    StreamId::parse(&text)
        .ok_or_else(|| serde::de::Error::custom(format!("`{text}` is not a stream id")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_json_round_trips() {
        let p = Progress::new(
            "fanout-a",
            16,
            vec![0, 3, 15],
            StreamId {
                ms: 1_795_819_301_328,
                seq: 2,
            },
        );
        let text = r#"{"v":1,"replica":"fanout-a","partitions":16,"owned":[0,3,15],"upto":"1795819301328-2"}"#;
        assert_eq!(String::from_utf8(p.encode()).expect("utf-8"), text);
        assert_eq!(Progress::decode(text.as_bytes()).expect("decodes"), p);
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        assert!(Progress::decode(b"junk").is_err());
        let bad_id = r#"{"v":1,"replica":"r","partitions":1,"owned":[0],"upto":"soon"}"#;
        assert!(Progress::decode(bad_id.as_bytes()).is_err());
        let v2 = r#"{"v":2,"replica":"r","partitions":1,"owned":[0],"upto":"1-0"}"#;
        assert!(matches!(
            Progress::decode(v2.as_bytes()),
            Err(ProgressError::Version(2))
        ));
    }
}
