//! A batch turned into requests: what each kind's `request.rs` produces.
//!
//! A [`Plan`] says, for every record of the batch, exactly one of: carried by a request (the
//! request knows which records each of its items carries), refused before sending (with a
//! bounded reason and the words for the dead-letter topic), or skipped (confirmed without a
//! request, and counted). Building a plan sends nothing and counts nothing: the delivery loop
//! counts from the plan, so every kind's refusals and skips are counted the same way.

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
}

impl<R> Default for Plan<R> {
    fn default() -> Self {
        Plan { requests: Vec::new(), refused: Vec::new(), skipped: Vec::new() }
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

    /// A delete at a vendor that cannot delete by our identifiers: skipped or refused, as the
    /// destination's `on_delete` says.
    pub fn unsupported_delete(&mut self, policy: UnsupportedDelete, kind: &'static str, index: usize) {
        match policy {
            UnsupportedDelete::Skip => self.skip(SkipReason::OnDeleteSkip),
            UnsupportedDelete::Reject => {
                self.refuse(index, RefusalReason::DeleteUnsupported, format!("{kind} destination does not delete (on_delete = \"reject\")"))
            }
        }
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
    /// A delete the vendor cannot do, with `on_delete = "reject"`.
    DeleteUnsupported,
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
            RefusalReason::DeleteUnsupported => "delete_unsupported",
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

/// What a Delete does at a vendor whose documented API has no delete by our identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnsupportedDelete {
    /// Confirm the record without a request, and count it
    /// (`sluice_destination_deletes_skipped_total{reason="on_delete_skip"}`).
    #[default]
    Skip,
    /// Refuse the record (permanent): it lands in the dead-letter topic for a person to act on.
    Reject,
}
