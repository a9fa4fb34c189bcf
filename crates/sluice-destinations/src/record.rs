//! The record a destination applies: one change after mapping, and what to do with it.

use sluice_core::config::SyncMode;
use sluice_core::Op;

/// One record to apply, after mapping.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OutboundRecord {
    /// Stable id of the source record (`topic/partition/offset`): the same on every retry and
    /// replay, so receivers can deduplicate.
    pub id: String,
    /// The model the change came from.
    pub model: String,
    /// What to do at the destination.
    pub action: Action,
    /// The source operation; serialised as its one-letter code (`c`, `u`, `d`, `r`).
    #[serde(serialize_with = "op_code")]
    pub op: Op,
    /// Primary-key fields of the source row.
    pub key: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields of the current image (empty for deletes).
    pub fields: serde_json::Map<String, serde_json::Value>,
    /// Mapped destination fields of the `before` image, when the event has one and a mapped
    /// field changed. Destinations keyed by a mutable identifier (email, phone) use it to move
    /// the record: update through a stable id, or remove-old + add-new.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<serde_json::Map<String, serde_json::Value>>,
    /// When the change was observed, ms since the epoch.
    pub ts_ms: i64,
}

fn op_code<S: serde::Serializer>(op: &Op, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(op.code())
}

impl OutboundRecord {
    /// Whether the record takes its row out of the destination: a `Delete` action, or an
    /// append-mode event of a delete.
    pub fn removes(&self) -> bool {
        self.action == Action::Delete || (self.action == Action::Event && self.op == Op::Delete)
    }

    /// A field's value as text: from the current image, else the `before` image, else the
    /// primary key. `None` when absent, null or empty.
    pub fn text(&self, field: &str) -> Option<String> {
        [Some(&self.fields), self.previous.as_ref(), Some(&self.key)]
            .into_iter()
            .flatten()
            .find_map(|image| image.get(field).and_then(value_text))
    }

    /// A field's value in the `before` image only, when it differs from the current one: the
    /// identifier to move away from.
    pub fn changed_from(&self, field: &str) -> Option<String> {
        let before = self.previous.as_ref()?.get(field).and_then(value_text)?;
        let now = self.fields.get(field).and_then(value_text)?;
        (before != now).then_some(before)
    }
}

/// A JSON value as text: strings as they are, numbers and booleans printed; `None` for null,
/// empty strings, arrays and objects.
pub fn value_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// SHA-256 over a batch's first id, last id and length: the same for the same batch on every
/// retry, different for any other batch of the stream (ids are `topic/partition/offset`).
pub fn batch_digest(batch: &[OutboundRecord]) -> [u8; 32] {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    hasher.update(batch.first().map_or("", |r| r.id.as_str()).as_bytes());
    hasher.update(b"\n");
    hasher.update(batch.last().map_or("", |r| r.id.as_str()).as_bytes());
    hasher.update(b"\n");
    hasher.update(batch.len().to_string().as_bytes());
    hasher.finalize().into()
}

/// What the destination must do with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Update or create (audience syncs: add the member).
    Upsert,
    /// Update only; a missing record is not created.
    Update,
    /// Create only; an existing record is left alone.
    Create,
    /// Remove (mirror: delete the record; audience: remove the member; suppression: unsubscribe).
    Delete,
    /// Append-mode event, carrying the op.
    Event,
}

impl Action {
    /// The action's name, as serialised (`schemas/audit/sync_outcome.avsc`, the webhook body).
    pub fn label(self) -> &'static str {
        match self {
            Action::Upsert => "upsert",
            Action::Update => "update",
            Action::Create => "create",
            Action::Delete => "delete",
            Action::Event => "event",
        }
    }

    /// The action of a change under a sync mode, or `None` when the mode ignores the change.
    /// `consented` is false when the row fails its sync's consent condition: the row is then
    /// treated as leaving the destination, so a revocation propagates.
    pub fn for_change(mode: SyncMode, op: Op, consented: bool) -> Option<Action> {
        let leaving = op == Op::Delete || !consented;
        match mode {
            SyncMode::Append => Some(Action::Event),
            SyncMode::Mirror | SyncMode::Audience if leaving => Some(Action::Delete),
            SyncMode::Mirror | SyncMode::Audience => Some(Action::Upsert),
            SyncMode::Upsert if leaving => consent_removal(consented),
            SyncMode::Update if leaving => consent_removal(consented),
            SyncMode::Create if leaving => None,
            SyncMode::Upsert => Some(Action::Upsert),
            SyncMode::Update => Some(Action::Update),
            SyncMode::Create => Some(Action::Create),
        }
    }
}

/// A consent revocation removes (unsubscribes) even in modes that do not propagate deletes; a
/// plain delete in those modes is ignored.
fn consent_removal(consented: bool) -> Option<Action> {
    (!consented).then_some(Action::Delete)
}

/// A record of model `customers` with op `u`, for kinds' unit tests.
#[cfg(test)]
pub(crate) fn test_record(id: &str, action: Action, fields: serde_json::Value, previous: Option<serde_json::Value>) -> OutboundRecord {
    OutboundRecord {
        id: id.into(),
        model: "customers".into(),
        action,
        op: Op::Update,
        key: Default::default(),
        fields: fields.as_object().expect("fields are an object").clone(),
        previous: previous.map(|p| p.as_object().expect("previous is an object").clone()),
        ts_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_actions_label_is_its_serialised_name() {
        for action in [Action::Upsert, Action::Update, Action::Create, Action::Delete, Action::Event] {
            assert_eq!(serde_json::to_value(action).unwrap(), action.label(), "{action:?}");
        }
    }

    #[test]
    fn op_is_serialised_as_its_code_and_an_event_of_a_delete_removes() {
        let record = OutboundRecord {
            id: "t/0/1".into(),
            model: "m".into(),
            action: Action::Event,
            op: Op::Delete,
            key: Default::default(),
            fields: Default::default(),
            previous: None,
            ts_ms: 0,
        };
        assert_eq!(
            serde_json::to_string(&record).unwrap(),
            r#"{"id":"t/0/1","model":"m","action":"event","op":"d","key":{},"fields":{},"ts_ms":0}"#
        );
        assert!(record.removes());
        assert!(!OutboundRecord { op: Op::Update, ..record.clone() }.removes());
        assert!(OutboundRecord { action: Action::Delete, op: Op::Update, ..record }.removes());
    }
}
