//! A batch turned into requests: what each kind's `request.rs` produces.
//!
//! A [`Plan`] says, for every record of the batch, exactly one of: carried by a request (the
//! request knows which records each of its items carries), refused before sending (with a
//! bounded reason and the words for the dead-letter topic), or skipped (confirmed without a
//! request, and counted). It also lists the identifier fields whose value normalised to nothing
//! ([`Plan::identifier`]): such a value is missing, never sent. Building a plan sends nothing and
//! counts nothing: the delivery loop counts from the plan, so every kind's refusals, skips and
//! missing identifiers are counted the same way.
//!
//! [`Phases`] groups a batch into requests of several operations (write, delete) while keeping
//! each key's records in batch order.

use crate::destination::RecordFailure;

/// What to send for a batch, and the records not sent.
#[derive(Debug)]
pub struct Plan<R> {
    /// The requests, in the order they are sent (most kinds: one; Meta: removes, then adds).
    pub requests: Vec<R>,
    /// Records refused before any request.
    pub refused: Vec<Refusal>,
    /// Records confirmed without a request, by why.
    pub skipped: Vec<SkipReason>,
    /// Identifier fields (mapped field names) whose value normalised to nothing, once per
    /// record and field: counted in `sluice_destination_identifiers_missing_total`.
    pub missing: Vec<String>,
}

impl<R> Default for Plan<R> {
    fn default() -> Self {
        Plan { requests: Vec::new(), refused: Vec::new(), skipped: Vec::new(), missing: Vec::new() }
    }
}

impl<R> Plan<R> {
    /// Refuse the record at `index` (permanent: it is dead-lettered).
    pub fn refuse(&mut self, index: usize, reason: RefusalReason, message: impl Into<String>) {
        self.refused.push(Refusal { index, reason, message: message.into() });
    }

    /// Confirm a record without sending it.
    pub fn skip(&mut self, reason: SkipReason) {
        self.skipped.push(reason);
    }

    /// A delete the destination's `on_delete` declines: `true` when it was skipped (counted) or
    /// refused (dead-lettered), `false` for `on_delete = "delete"`, which the caller sends.
    pub fn decline_delete(&mut self, policy: OnDelete, kind: &'static str, index: usize) -> bool {
        match policy {
            OnDelete::Delete => return false,
            OnDelete::Skip => self.skip(SkipReason::OnDeleteSkip),
            OnDelete::Reject => self.refuse(index, RefusalReason::DeleteRejected, format!("{kind} destination refuses deletes (on_delete = \"reject\")")),
        }
        true
    }

    /// A record's identifier: `raw` (the record's value of `field`, if any) normalised by
    /// `normalise`. A value that normalises to nothing (a blank email, a phone of "n/a") is
    /// missing: `None`, and `field` is listed in [`Plan::missing`]; it is never sent as an
    /// empty identifier or the hash of one.
    pub fn identifier(&mut self, field: &str, raw: Option<String>, normalise: impl FnOnce(&str) -> Option<String>) -> Option<String> {
        let raw = raw?;
        let value = normalise(&raw);
        if value.is_none() {
            self.missing.push(field.to_string());
        }
        value
    }

    /// Indexes of the refused records, in order (for tests).
    pub fn refused_indexes(&self) -> Vec<usize> {
        self.refused.iter().map(|r| r.index).collect()
    }
}

/// Request items keyed by an identifier, each with the records it carries: a record whose key
/// is already there is merged into that item (vendors refuse, or do not document, duplicate ids
/// in one request). Items keep first-seen order.
#[derive(Debug)]
pub struct Keyed<K, T> {
    /// The items, in first-seen order.
    pub items: Vec<T>,
    /// `owners[i]`: the records item i carries, in batch order.
    pub owners: Vec<Vec<usize>>,
    at: std::collections::HashMap<K, usize>,
}

impl<K: std::hash::Hash + Eq, T> Default for Keyed<K, T> {
    fn default() -> Self {
        Keyed { items: Vec::new(), owners: Vec::new(), at: std::collections::HashMap::new() }
    }
}

impl<K: std::hash::Hash + Eq, T> Keyed<K, T> {
    /// The item of `key`, now also carrying record `index`; `None` when there is none yet
    /// ([`Keyed::push`] it).
    pub fn existing(&mut self, key: &K, index: usize) -> Option<&mut T> {
        let at = *self.at.get(key)?;
        self.owners[at].push(index);
        Some(&mut self.items[at])
    }

    /// A new item for `key`, carrying record `index`.
    pub fn push(&mut self, key: K, index: usize, item: T) {
        self.at.insert(key, self.items.len());
        self.items.push(item);
        self.owners.push(vec![index]);
    }

    /// Whether no item was added.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The position of `key`'s item, if it has one.
    pub fn position(&self, key: &K) -> Option<usize> {
        self.at.get(key).copied()
    }

    /// The key of the item at `position`.
    pub fn key_at(&self, position: usize) -> &K {
        self.at.iter().find(|(_, &at)| at == position).map(|(key, _)| key).expect("every item has a key")
    }
}

/// Requests of several operations built from one batch, each a [`Keyed`] set of items, in an
/// order that keeps each key's records in batch order: a record joins the first request of its
/// operation that comes after every request holding an earlier record of its key (or the one
/// holding that record, when it is of the same operation: the items merge). So `upsert A, delete
/// B, upsert C` is two requests (A and C upserted, then B deleted) while `upsert A, delete A` is
/// two in that order, and the delivery loop, which sends requests in order, never applies a
/// key's changes out of order.
#[derive(Debug)]
pub struct Phases<O, K, T> {
    /// The requests, in sending order: their operation and items.
    pub phases: Vec<(O, Keyed<K, T>)>,
    /// The phase holding each key's latest record.
    last: std::collections::HashMap<K, usize>,
}

impl<O, K: std::hash::Hash + Eq, T> Default for Phases<O, K, T> {
    fn default() -> Self {
        Phases { phases: Vec::new(), last: std::collections::HashMap::new() }
    }
}

impl<O: PartialEq + Copy, K: std::hash::Hash + Eq + Clone, T> Phases<O, K, T> {
    /// Add record `index` with `key` to the request of `operation` where it keeps its key's
    /// order: merged into the key's existing item there by `merge`, or a new item `make()`.
    pub fn add(&mut self, operation: O, key: K, index: usize, make: impl FnOnce() -> T, merge: impl FnOnce(&mut T)) {
        let after = self.last.get(&key).copied();
        let phase = match after {
            Some(at) if self.phases[at].0 == operation => Some(at),
            _ => self.phases.iter().enumerate().skip(after.map_or(0, |at| at + 1)).find(|(_, (op, _))| *op == operation).map(|(i, _)| i),
        };
        let phase = phase.unwrap_or_else(|| {
            self.phases.push((operation, Keyed::default()));
            self.phases.len() - 1
        });
        self.last.insert(key.clone(), phase);
        let items = &mut self.phases[phase].1;
        match items.existing(&key, index) {
            Some(item) => merge(item),
            None => items.push(key, index, make()),
        }
    }
}

/// A record refused before sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    /// Index into the batch.
    pub index: usize,
    /// Why, as a bounded metric label.
    pub reason: RefusalReason,
    /// Why, in words (no personal data).
    pub message: String,
}

impl Refusal {
    /// The record failure the sink dead-letters.
    pub fn into_failure(self) -> RecordFailure {
        RecordFailure::permanent(self.index, self.message, None, "")
    }
}

/// Why a record was not applied (the `reason` label of
/// `sluice_destination_records_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalReason {
    /// The record lacks the value the vendor matches on (an id, a member, a key).
    NoIdentifier,
    /// A delete refused by the destination's `on_delete = "reject"`.
    DeleteRejected,
    /// The vendor refused it inside a request that went through (permanent).
    Vendor,
    /// The vendor asked for it to be retried, inside a request that went through.
    VendorRetryable,
}

impl RefusalReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            RefusalReason::NoIdentifier => "no_identifier",
            RefusalReason::DeleteRejected => "on_delete_reject",
            RefusalReason::Vendor => "vendor",
            RefusalReason::VendorRetryable => "vendor_retryable",
        }
    }
}

/// Why a delete was confirmed without a request (the `reason` label of
/// `sluice_destination_deletes_skipped_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `on_delete = "skip"` at a vendor that cannot delete by our identifiers.
    OnDeleteSkip,
    /// A suppression list's row going away: a suppression ending never re-adds or re-subscribes.
    SuppressionMode,
    /// An unsubscribe with nothing configured to unsubscribe from.
    NothingToUnsubscribe,
}

/// Why a record was confirmed without changing anything at the vendor, learnt by asking it (the
/// `reason` label of `sluice_destination_records_unchanged_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unchanged {
    /// An `update` of a record the vendor does not hold: `update` never creates.
    NotFound,
    /// A `create` of a record the vendor already holds: `create` never changes one.
    Exists,
    /// A delete of a record the vendor does not hold (any more): already deleted.
    AlreadyDeleted,
}

impl Unchanged {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Unchanged::NotFound => "not_found",
            Unchanged::Exists => "exists",
            Unchanged::AlreadyDeleted => "already_deleted",
        }
    }
}

impl SkipReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SkipReason::OnDeleteSkip => "on_delete_skip",
            SkipReason::SuppressionMode => "suppression_mode",
            SkipReason::NothingToUnsubscribe => "nothing_to_unsubscribe",
        }
    }
}

/// What a Delete does at a CRM whose delete takes the vendor's own record id (HubSpot,
/// Salesforce): the id is looked up by our identifier first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnDelete {
    /// Look the record up and delete it (HubSpot archives it; `"archive"` is accepted too). A
    /// record the vendor does not hold is already deleted: confirmed, and counted
    /// (`sluice_destination_records_unchanged_total{reason="already_deleted"}`). The only
    /// setting a `mirror` sync accepts.
    #[default]
    #[serde(alias = "archive")]
    Delete,
    /// Confirm the record without a request, and count it
    /// (`sluice_destination_deletes_skipped_total{reason="on_delete_skip"}`).
    Skip,
    /// Refuse the record (permanent): it lands in the dead-letter topic for a person to act on.
    Reject,
}
