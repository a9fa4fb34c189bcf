//! The stage's state as pure data: the entries of each suppression list and, per sync that
//! honours lists, the index of its audience rows. No Kafka, no clock, no locking: the stage
//! ([`super::Stage`]) holds one `State` behind one mutex, which is what makes each step below
//! atomic with respect to the others (the ordering argument in the module doc of
//! [`super`] relies on it).
//!
//! - A list's entries: list row → identity, and identity → how many live rows name it. A person
//!   is on the list while that count is above zero; [`State::set_entry`] reports the identities
//!   that got on or off.
//! - A sync's members: audience row → [`Member`] (who it names, where its latest record is,
//!   which lane delivers it), and identity → its rows (usually one).
//!
//! Memory is accounted exactly by [`State::heap_bytes`] (the tables' allocations), exported as
//! `sluice_sink_stage_bytes`; the figures per entry and per member are measured by the tests
//! below and written down in `docs/sink.md`.

use super::identity::Identity;
use crate::hashes::{HashMap, KeyHash};

/// Where an audience row's latest record is, and whom it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// `None`: its identifier is NULL or empty, so no list can name it.
    pub identity: Option<Identity>,
    pub offset: i64,
    pub partition: i32,
    /// The lane that delivers this row (by topic and key), where its recomputes must run.
    pub lane: u16,
}

/// An audience row to decide again, in its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    /// Index of the sync (in the stage's order).
    pub sync: usize,
    pub key: KeyHash,
    pub lane: u16,
}

/// The rows naming one identity: almost always one, so kept inline (the rare list is boxed, so
/// the enum is no larger than one key).
#[derive(Debug)]
enum Keys {
    One(KeyHash),
    // Boxed (an extra allocation, for the rare person with several rows) so that the common
    // case stays 16 bytes: a `Vec` inline would make every entry 32.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<KeyHash>>),
}

impl Keys {
    fn as_slice(&self) -> &[KeyHash] {
        match self {
            Keys::One(key) => std::slice::from_ref(key),
            Keys::Many(keys) => keys,
        }
    }
}

#[derive(Debug, Default)]
struct List {
    by_row: HashMap<KeyHash, Identity>,
    live: HashMap<Identity, u32>,
}

impl List {
    /// Count one more (`up`) or one fewer live row naming `identity`; true when it got on
    /// (0 → 1) or off (1 → 0) the list.
    fn count(&mut self, identity: Identity, up: bool) -> bool {
        if up {
            let count = self.live.entry(identity).or_insert(0);
            *count += 1;
            *count == 1
        } else {
            match self.live.get_mut(&identity) {
                Some(count) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    self.live.remove(&identity);
                    true
                }
                None => false,
            }
        }
    }
}

#[derive(Debug, Default)]
struct Members {
    by_key: HashMap<KeyHash, Member>,
    by_identity: HashMap<Identity, Keys>,
}

impl Members {
    fn set(&mut self, key: KeyHash, member: Option<Member>) {
        let old = match member {
            Some(member) => self.by_key.insert(key, member),
            None => self.by_key.remove(&key),
        };
        let (old, new) = (old.and_then(|m| m.identity), member.and_then(|m| m.identity));
        if old == new {
            return;
        }
        if let Some(identity) = old {
            self.unlink(identity, key);
        }
        if let Some(identity) = new {
            self.by_identity
                .entry(identity)
                .and_modify(|keys| match keys {
                    Keys::One(first) => *keys = Keys::Many(Box::new(vec![*first, key])),
                    Keys::Many(all) => all.push(key),
                })
                .or_insert(Keys::One(key));
        }
    }

    fn unlink(&mut self, identity: Identity, key: KeyHash) {
        let Some(keys) = self.by_identity.get_mut(&identity) else { return };
        match keys {
            Keys::One(only) if *only == key => {
                self.by_identity.remove(&identity);
            }
            Keys::One(_) => {}
            Keys::Many(all) => {
                all.retain(|k| *k != key);
                if let [last] = all[..] {
                    *keys = Keys::One(last);
                }
            }
        }
    }
}

/// Sizes, for the gauges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Sizes {
    /// Per list: rows on it, and distinct people they name.
    pub lists: Vec<(usize, usize)>,
    /// Per sync: audience rows indexed.
    pub members: Vec<usize>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct State {
    lists: Vec<List>,
    members: Vec<Members>,
    /// The lists each sync honours.
    sync_lists: Vec<Vec<usize>>,
    /// The syncs each list applies to.
    list_syncs: Vec<Vec<usize>>,
}

impl State {
    /// A state for syncs honouring the given lists (indexes into `0..lists`).
    pub(crate) fn new(sync_lists: Vec<Vec<usize>>, lists: usize) -> State {
        let mut list_syncs = vec![Vec::new(); lists];
        for (sync, names) in sync_lists.iter().enumerate() {
            for &list in names {
                list_syncs[list].push(sync);
            }
        }
        State {
            lists: (0..lists).map(|_| List::default()).collect(),
            members: sync_lists.iter().map(|_| Members::default()).collect(),
            sync_lists,
            list_syncs,
        }
    }

    /// List row `row` of `list` now names `identity`; `None`: the row left the list (deleted,
    /// expired, or its identifier became NULL). Returns the people who got on or off the list.
    pub(crate) fn set_entry(&mut self, list: usize, row: KeyHash, identity: Option<Identity>) -> Vec<Identity> {
        let list = &mut self.lists[list];
        let old = match identity {
            Some(identity) => list.by_row.insert(row, identity),
            None => list.by_row.remove(&row),
        };
        let mut changed = Vec::new();
        if old == identity {
            return changed;
        }
        if let Some(old) = old {
            if list.count(old, false) {
                changed.push(old);
            }
        }
        if let Some(new) = identity {
            if list.count(new, true) {
                changed.push(new);
            }
        }
        changed
    }

    /// Whom list row `row` names now.
    pub(crate) fn entry(&self, list: usize, row: KeyHash) -> Option<Identity> {
        self.lists[list].by_row.get(&row).copied()
    }

    /// Audience row `key` of `sync` is now `member`; `None`: it left the model.
    pub(crate) fn set_member(&mut self, sync: usize, key: KeyHash, member: Option<Member>) {
        self.members[sync].set(key, member);
    }

    /// The audience row `key` of `sync`, if indexed.
    pub(crate) fn member(&self, sync: usize, key: KeyHash) -> Option<Member> {
        self.members[sync].by_key.get(&key).copied()
    }

    /// Whether `identity` is on any list `sync` honours. Nobody (`None`) is on no list.
    pub(crate) fn suppressed(&self, sync: usize, identity: Option<Identity>) -> bool {
        let Some(identity) = identity else { return false };
        self.sync_lists[sync].iter().any(|&list| self.lists[list].live.contains_key(&identity))
    }

    /// The audience rows of every sync honouring `list` that name one of `identities`, and pass
    /// `keep(sync, row)`.
    pub(crate) fn targets(&self, list: usize, identities: &[Identity], mut keep: impl FnMut(usize, &Member) -> bool) -> Vec<Target> {
        let mut targets = Vec::new();
        for &sync in &self.list_syncs[list] {
            let members = &self.members[sync];
            for identity in identities {
                let Some(keys) = members.by_identity.get(identity) else { continue };
                for &key in keys.as_slice() {
                    let member = members.by_key[&key];
                    if keep(sync, &member) {
                        targets.push(Target { sync, key, lane: member.lane });
                    }
                }
            }
        }
        targets
    }

    pub(crate) fn sizes(&self) -> Sizes {
        Sizes {
            lists: self.lists.iter().map(|l| (l.by_row.len(), l.live.len())).collect(),
            members: self.members.iter().map(|m| m.by_key.len()).collect(),
        }
    }

    /// Bytes the state's tables have allocated.
    pub(crate) fn heap_bytes(&self) -> usize {
        let lists: usize = self.lists.iter().map(|l| table_bytes(&l.by_row) + table_bytes(&l.live)).sum();
        let members: usize = self
            .members
            .iter()
            .map(|m| {
                let spilled: usize =
                    m.by_identity.values().map(|keys| if let Keys::Many(all) = keys { size_of::<Vec<KeyHash>>() + all.capacity() * size_of::<KeyHash>() } else { 0 }).sum();
                table_bytes(&m.by_key) + table_bytes(&m.by_identity) + spilled
            })
            .sum();
        lists + members
    }
}

/// What a `HashMap`'s table allocates: its buckets (a power of two, at most 7/8 full, which
/// `capacity` reports) of one entry and one control byte each, plus one group of control bytes.
fn table_bytes<K, V>(map: &HashMap<K, V>) -> usize {
    const GROUP: usize = 16;
    let capacity = map.capacity();
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 8 { (capacity + 1).next_power_of_two() } else { (capacity * 8 / 7).next_power_of_two() };
    buckets * (size_of::<(K, V)>() + 1) + GROUP
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Option<Identity> {
        Some(Identity::of_text(&format!("person{n}@example.com")))
    }

    fn key(n: u32) -> KeyHash {
        KeyHash::of(&n.to_be_bytes())
    }

    fn member(identity: Option<Identity>, offset: i64) -> Option<Member> {
        Some(Member { identity, offset, partition: 0, lane: 3 })
    }

    #[test]
    fn a_person_is_on_a_list_while_any_live_row_names_them() {
        let mut state = State::new(vec![vec![0]], 1);
        assert_eq!(state.set_entry(0, key(1), id(1)), [id(1).unwrap()], "first purchase: on");
        assert!(state.suppressed(0, id(1)));
        assert_eq!(state.set_entry(0, key(2), id(1)), [], "second purchase: still on, no change");
        assert_eq!(state.set_entry(0, key(1), id(1)), [], "a row read again changes nothing");
        assert_eq!(state.set_entry(0, key(1), None), [], "one of two rows left: still on");
        assert!(state.suppressed(0, id(1)));
        assert_eq!(state.set_entry(0, key(2), None), [id(1).unwrap()], "last row left: off");
        assert!(!state.suppressed(0, id(1)));
        assert_eq!(state.set_entry(0, key(2), None), [], "a delete seen twice changes nothing");
        assert!(!state.suppressed(0, None), "nobody is on no list");
    }

    #[test]
    fn a_row_that_changes_person_moves_the_suppression() {
        let mut state = State::new(vec![vec![0]], 1);
        state.set_entry(0, key(1), id(1));
        assert_eq!(state.set_entry(0, key(1), id(2)), [id(1).unwrap(), id(2).unwrap()], "off for the old, on for the new");
        assert_eq!(state.entry(0, key(1)), id(2));
        assert!(!state.suppressed(0, id(1)) && state.suppressed(0, id(2)));
        assert_eq!(state.set_entry(0, key(1), None), [id(2).unwrap()], "a NULL identifier names nobody");
        assert_eq!(state.sizes(), Sizes { lists: vec![(0, 0)], members: vec![0] });
    }

    #[test]
    fn a_sync_honours_only_its_own_lists() {
        // sync 0 honours lists 0 and 1, sync 1 only list 1.
        let mut state = State::new(vec![vec![0, 1], vec![1]], 2);
        state.set_entry(0, key(1), id(1));
        assert!(state.suppressed(0, id(1)));
        assert!(!state.suppressed(1, id(1)));
        state.set_entry(1, key(1), id(1));
        assert!(state.suppressed(1, id(1)));
    }

    #[test]
    fn the_index_follows_rows_and_finds_every_row_of_a_person() {
        let mut state = State::new(vec![vec![0], vec![0]], 1);
        state.set_member(0, key(10), member(id(1), 5));
        state.set_member(0, key(11), member(id(1), 6));
        state.set_member(0, key(12), member(id(2), 7));
        state.set_member(1, key(10), member(id(1), 9));
        let targets = state.targets(0, &[id(1).unwrap()], |_, _| true);
        assert_eq!(
            targets,
            [Target { sync: 0, key: key(10), lane: 3 }, Target { sync: 0, key: key(11), lane: 3 }, Target { sync: 1, key: key(10), lane: 3 }],
            "every row of the person, in every sync honouring the list"
        );
        assert_eq!(state.targets(0, &[id(1).unwrap()], |_, m| m.offset > 5).len(), 2, "the filter sees each row's location");
        // Row 11 changes person, row 10 leaves: only 12 and 11 are left.
        state.set_member(0, key(11), member(id(2), 8));
        state.set_member(0, key(10), None);
        assert!(state.targets(0, &[id(1).unwrap()], |_, _| true).iter().all(|t| t.sync == 1));
        let mut of_2: Vec<KeyHash> = state.targets(0, &[id(2).unwrap()], |_, _| true).into_iter().map(|t| t.key).collect();
        of_2.sort_by_key(|k| format!("{k:?}"));
        let mut expected = vec![key(11), key(12)];
        expected.sort_by_key(|k| format!("{k:?}"));
        assert_eq!(of_2, expected);
        assert_eq!(state.member(0, key(11)).unwrap().offset, 8, "the latest location");
        state.set_member(0, key(12), member(None, 9));
        assert_eq!(state.targets(0, &[id(2).unwrap()], |_, _| true).len(), 1, "a NULL identifier is linked to nobody");
        assert_eq!(state.sizes().members, [2, 1]);
    }

    /// The ordering argument, played out on the state with a model of one lane.
    ///
    /// A lane takes its items in order. K's record goes through three steps: admitted (the index
    /// learns K → X), decided (its batch is flushed: add, unless X is suppressed) and landed (the
    /// flush returned); a recompute is an item like any other (decided, then landed). A list
    /// change is one step under the stage's lock: update the entries, then enqueue a recompute
    /// of every row indexed for X into its lane. The purchase can happen before K is admitted,
    /// between admission and decision, while the decided batch is in flight, or after it landed:
    /// in every case the last thing to land for K is a removal, so an add decided before the
    /// purchase never lands after it. The release, likewise, ends with an add.
    #[test]
    fn an_add_decided_before_a_purchase_never_lands_after_the_removal() {
        #[derive(Debug, Clone, Copy, PartialEq)]
        enum Landed {
            Add,
            Remove,
        }
        let (k, x, purchase_row) = (key(1), id(1), key(99));
        let decide = |state: &State| if state.suppressed(0, x) { Landed::Remove } else { Landed::Add };
        // The list change; returns how many recomputes it enqueued in K's lane.
        let change = |state: &mut State, on: bool| {
            state.set_entry(0, purchase_row, if on { x } else { None });
            state.targets(0, &[x.unwrap()], |_, _| true).len()
        };
        for purchase_at in 0..=3 {
            let mut state = State::new(vec![vec![0]], 1);
            let (mut queued, mut decided, mut landed) = (0, None, Vec::new());
            for step in 0..=3 {
                if step == purchase_at {
                    queued += change(&mut state, true);
                }
                match step {
                    0 => state.set_member(0, k, member(x, 1)),
                    1 => decided = Some(decide(&state)),
                    2 => landed.extend(decided.take()),
                    _ => {}
                }
            }
            // Then the lane works through the recomputes queued behind the record.
            for _ in 0..std::mem::take(&mut queued) {
                landed.push(decide(&state));
            }
            assert_eq!(landed.last(), Some(&Landed::Remove), "purchase at step {purchase_at}: {landed:?}");
            queued += change(&mut state, false);
            assert_eq!(queued, 1, "the release recomputes K");
            landed.push(decide(&state));
            assert_eq!(landed.last(), Some(&Landed::Add), "released after a purchase at step {purchase_at}: {landed:?}");
        }
    }

    /// Bytes per list entry and per member, as allocated by the tables: the figures in
    /// `docs/sink.md`. Bounds fail the test if a change makes them grow.
    #[test]
    fn memory_per_entry_and_per_member() {
        const N: u32 = 100_000;
        let mut entries = State::new(vec![vec![0]], 1);
        for n in 0..N {
            entries.set_entry(0, key(n), Some(Identity::of_text(&n.to_string())));
        }
        let per_entry = entries.heap_bytes() as f64 / f64::from(N);
        let mut members = State::new(vec![vec![0]], 1);
        for n in 0..N {
            members.set_member(0, key(n), member(Some(Identity::of_text(&n.to_string())), i64::from(n)));
        }
        let per_member = members.heap_bytes() as f64 / f64::from(N);
        println!("stage memory at {N} rows: {per_entry:.1} bytes per list entry, {per_member:.1} bytes per member");
        assert_eq!((size_of::<Member>(), size_of::<Keys>(), size_of::<Option<Identity>>()), (32, 16, 16), "the layouts the figures rest on");
        assert!(per_entry <= 96.0, "{per_entry} bytes per list entry");
        assert!(per_member <= 128.0, "{per_member} bytes per member");
    }
}
