//! Every job ever submitted, kept in two persistent maps: the jobs with something still to
//! happen and the settled ones.
//!
//! A server that runs for years holds far more settled jobs than live ones, and nearly
//! every command looks up, inserts or changes a live job. Keeping the settled jobs in a
//! map of their own keeps the map those commands walk (and copy the path of) as small
//! as the live work, whatever the past holds: a submit with 100,000 finished jobs walks
//! the same few nodes as one with 1,000. A settled job leaves the live map when the fold
//! sees it settle ([`job_is_live`] turns false) and comes back if something happens to it
//! again (a site reconnects still running its app).
//!
//! The placement is a matter of cost only: a lookup tries the live map, then the settled
//! one, and every walk merges both in id order, so a job in the "wrong" map (a state
//! built by hand, then changed in place) is still found and listed where it belongs.

use std::cmp::Ordering;
use std::iter::Peekable;
use std::sync::Arc;

use imbl::ordmap::DiffItem;
use imbl::OrdMap;

use super::state::{job_is_live, Job};
use crate::job::JobId;

/// The jobs by id; see the module documentation.
#[derive(Clone, Debug, Default)]
pub struct Jobs {
    /// Jobs with something still to happen ([`job_is_live`]), and any job changed in
    /// place since it was placed.
    live: OrdMap<JobId, Arc<Job>>,
    /// Jobs the fold saw settle.
    settled: OrdMap<JobId, Arc<Job>>,
}

impl Jobs {
    /// No jobs.
    pub fn new() -> Jobs {
        Jobs::default()
    }

    /// The job with this id.
    pub fn get(&self, id: &JobId) -> Option<&Arc<Job>> {
        self.live.get(id).or_else(|| self.settled.get(id))
    }

    /// The job with this id, to change (copied first if a copy of the state shares it).
    /// The live map is tried first, with one walk: nearly every change is to a live job.
    /// A miss there (a settled job changed) still copies the live map's path to where
    /// the id would be, when a copy of the state shares it: a few nodes, on a rare path.
    pub fn get_mut(&mut self, id: &JobId) -> Option<&mut Arc<Job>> {
        match self.live.get_mut(id) {
            Some(job) => Some(job),
            None => self.settled.get_mut(id),
        }
    }

    /// Whether a job has this id.
    pub fn contains_key(&self, id: &JobId) -> bool {
        self.live.contains_key(id) || self.settled.contains_key(id)
    }

    /// Adds or replaces the job, in the map its state calls for.
    pub fn insert(&mut self, id: JobId, job: Arc<Job>) -> Option<Arc<Job>> {
        // Only a map that holds the id is changed: removing a missing key still copies
        // the path to where it would be, which in the settled map is the cost this type
        // exists to avoid.
        let old = self.contains_key(&id).then(|| self.remove(&id)).flatten();
        self.insert_new(id, job);
        old
    }

    /// Adds a job whose id no job has, in the map its state calls for: loading a stored
    /// state, whose ids are known to be distinct, skips [`Jobs::insert`]'s look for an old
    /// entry. A job already under `id` would stay in the other map and be found first.
    pub fn insert_new(&mut self, id: JobId, job: Arc<Job>) {
        debug_assert!(!self.contains_key(&id), "job {id} is already in the maps");
        if job_is_live(&job) {
            self.live.insert(id, job);
        } else {
            self.settled.insert(id, job);
        }
    }

    /// Takes the job out.
    pub fn remove(&mut self, id: &JobId) -> Option<Arc<Job>> {
        if self.live.contains_key(id) {
            self.live.remove(id)
        } else if self.settled.contains_key(id) {
            self.settled.remove(id)
        } else {
            None
        }
    }

    /// Moves the job to the map its state calls for, if it is not there already. The
    /// fold calls it when a job's [`job_is_live`] changes.
    pub fn place(&mut self, id: &JobId) {
        let Some(job) = self.get(id) else {
            return;
        };
        let live = job_is_live(job);
        if live == self.live.contains_key(id) {
            return;
        }
        let (from, to) = if live {
            (&mut self.settled, &mut self.live)
        } else {
            (&mut self.live, &mut self.settled)
        };
        if let Some(mut job) = from.remove(id) {
            if !live {
                // A settled job is kept for good: its schedule tries give back the room
                // `Vec::push` left them to grow in (a first push makes room for four).
                // Done here, once, rather than on every push, where an exact-size push
                // would copy a long queue's tries at every try.
                Arc::make_mut(&mut job).schedule_history.shrink_to_fit();
            }
            to.insert(*id, job);
        }
    }

    /// Holds `copy` as the job of its id, which the caller found equal to the job held:
    /// the two holders then share one copy (a change to either copies it first), and the
    /// map's value is the same. Nothing changes when no job has that id.
    pub fn share(&mut self, copy: &Arc<Job>) {
        if self
            .get(&copy.id)
            .is_none_or(|held| Arc::ptr_eq(held, copy))
        {
            return;
        }
        if let Some(held) = self.get_mut(&copy.id) {
            debug_assert!(**held == **copy, "only an equal job is shared");
            *held = Arc::clone(copy);
        }
    }

    /// How many jobs there are.
    pub fn len(&self) -> usize {
        self.live.len() + self.settled.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty() && self.settled.is_empty()
    }

    /// Whether the job sits in the live map (the fold's placement, for checks).
    pub fn in_live_map(&self, id: &JobId) -> bool {
        self.live.contains_key(id)
    }

    /// How many jobs sit in the live map (the cost of a command follows this number).
    pub fn live_len(&self) -> usize {
        self.live.len()
    }

    /// Every job with its id, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (&JobId, &Arc<Job>)> + '_ {
        ById {
            a: self.live.iter().peekable(),
            b: self.settled.iter().peekable(),
        }
    }

    /// Every id, in order.
    pub fn keys(&self) -> impl Iterator<Item = &JobId> + '_ {
        self.iter().map(|(id, _)| id)
    }

    /// Every job, in id order.
    pub fn values(&self) -> impl Iterator<Item = &Arc<Job>> + '_ {
        self.iter().map(|(_, job)| job)
    }

    /// What changed from `self` to `other`, map by map: a job that moved between the maps
    /// shows as removed from one and added to the other. Shared subtrees are skipped, so
    /// the cost follows the change, not the size.
    pub fn diff<'a>(
        &'a self,
        other: &'a Jobs,
    ) -> impl Iterator<Item = DiffItem<'a, 'a, JobId, Arc<Job>>> + 'a {
        self.live
            .diff(&other.live)
            .chain(self.settled.diff(&other.settled))
    }

    /// The jobs `other` added or changed since `self` (a job that only moved between the
    /// maps shows too), at the cost of the change.
    pub fn changed_in<'a>(&'a self, other: &'a Jobs) -> impl Iterator<Item = &'a Arc<Job>> + 'a {
        self.diff(other).filter_map(|item| match item {
            DiffItem::Add(_, job) | DiffItem::Update { new: (_, job), .. } => Some(job),
            DiffItem::Remove(..) => None,
        })
    }
}

/// The same jobs, wherever each is placed (both sides built by the fold place alike, and
/// then the maps' own comparison skips shared subtrees).
impl PartialEq for Jobs {
    fn eq(&self, other: &Jobs) -> bool {
        (self.live == other.live && self.settled == other.settled)
            || (self.len() == other.len() && self.iter().eq(other.iter()))
    }
}

impl Eq for Jobs {}

impl std::ops::Index<&JobId> for Jobs {
    type Output = Arc<Job>;

    fn index(&self, id: &JobId) -> &Arc<Job> {
        self.get(id).expect("no job with this id")
    }
}

impl FromIterator<(JobId, Arc<Job>)> for Jobs {
    fn from_iter<I: IntoIterator<Item = (JobId, Arc<Job>)>>(items: I) -> Jobs {
        let mut jobs = Jobs::new();
        for (id, job) in items {
            jobs.insert(id, job);
        }
        jobs
    }
}

impl<'a> IntoIterator for &'a Jobs {
    type Item = (&'a JobId, &'a Arc<Job>);
    type IntoIter = Box<dyn Iterator<Item = Self::Item> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

/// Two iterators sorted by id, merged into one sorted by id (ids are never in both).
struct ById<A: Iterator, B: Iterator> {
    a: Peekable<A>,
    b: Peekable<B>,
}

impl<'a, A, B> Iterator for ById<A, B>
where
    A: Iterator<Item = (&'a JobId, &'a Arc<Job>)>,
    B: Iterator<Item = (&'a JobId, &'a Arc<Job>)>,
{
    type Item = (&'a JobId, &'a Arc<Job>);

    fn next(&mut self) -> Option<Self::Item> {
        let order = match (self.a.peek(), self.b.peek()) {
            (Some((a, _)), Some((b, _))) => a.cmp(b),
            (Some(_), None) => Ordering::Less,
            (None, _) => Ordering::Greater,
        };
        match order {
            Ordering::Greater => self.b.next(),
            _ => self.a.next(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let (a_low, a_high) = self.a.size_hint();
        let (b_low, b_high) = self.b.size_hint();
        (a_low + b_low, a_high.and_then(|a| b_high.map(|b| a + b)))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::job::meta::JobMeta;
    use crate::lifecycle::{Archive, Identity, Run, RunStatus, Timestamp};

    /// A job: `SUBMITTED` (live) or `FINISHED:COMPLETED` with nothing left (settled).
    fn job(n: u8, live: bool) -> Arc<Job> {
        Arc::new(Job {
            id: id(n),
            meta: Arc::new(JobMeta {
                name: format!("job-{n}"),
                deploy_map: Vec::new(),
                min_clients: 1,
                mandatory_clients: Vec::new(),
                resource_spec: Default::default(),
            }),
            package: crate::lifecycle::BlobHash([n; 32]),
            submitter: Arc::new(Identity {
                name: "admin@a.org".into(),
                org: "a".into(),
                role: crate::lifecycle::Role::Lead,
            }),
            signer: None,
            submit_time: Timestamp::from_millis(i64::from(n)),
            submitted_seq: u64::from(n),
            cloned_from: None,
            status: if live {
                RunStatus::Submitted
            } else {
                RunStatus::Completed
            },
            finished_at: None,
            finish_reason: None,
            schedule_count: 0,
            last_schedule_time: None,
            schedule_history: Default::default(),
            run: Run::default(),
            archive: Archive::NoWorkspace,
            deleted: false,
        })
    }

    fn id(n: u8) -> JobId {
        JobId(uuid::Uuid::from_bytes([n; 16]))
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert job `n`, live or settled.
        Insert(u8, bool),
        /// Change job `n`'s status in place (live <-> settled) without placing it.
        Flip(u8),
        /// Place job `n` where its state calls for.
        Place(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12, any::<bool>()).prop_map(|(n, live)| Op::Insert(n, live)),
            (0u8..12).prop_map(Op::Flip),
            (0u8..12).prop_map(Op::Place),
            (0u8..12).prop_map(Op::Remove),
        ]
    }

    /// The jobs whose value differs between two plain maps, or that only one holds.
    fn model_changes(a: &BTreeMap<JobId, Arc<Job>>, b: &BTreeMap<JobId, Arc<Job>>) -> Vec<JobId> {
        let keys: std::collections::BTreeSet<&JobId> = a.keys().chain(b.keys()).collect();
        keys.into_iter()
            .filter(|k| a.get(*k) != b.get(*k))
            .copied()
            .collect()
    }

    /// The jobs `Jobs::diff` names, each once, in id order.
    fn diffed(a: &Jobs, b: &Jobs) -> Vec<JobId> {
        let ids: std::collections::BTreeSet<JobId> = a
            .diff(b)
            .map(|item| match item {
                DiffItem::Add(id, _) | DiffItem::Remove(id, _) => *id,
                DiffItem::Update { new: (id, _), .. } => *id,
            })
            .collect();
        ids.into_iter().collect()
    }

    /// A copy of the jobs changed in one place compares unequal and its diff names that
    /// job, wherever it sits after a run of subtrees the copy still shares (the shape the
    /// simulator's checks and every state comparison meet: a state against its own older
    /// copy). imbl before 7.0.2 dropped such a change from `diff`, and so from `==`
    /// (imbl issue #161): a changed state could compare equal to the one it came from.
    #[test]
    fn a_changed_copy_differs_wherever_the_change_sits() {
        for count in [17u8, 40, 100] {
            let ids = || (0..count).map(|n| n * 2);
            let model: BTreeMap<JobId, Arc<Job>> = ids().map(|n| (id(n), job(n, false))).collect();
            let before: Jobs = model.iter().map(|(k, v)| (*k, v.clone())).collect();
            // The copy against the original, as the plain maps compare.
            let check = |after: &Jobs, changed: &BTreeMap<JobId, Arc<Job>>, what: &str| {
                assert_eq!(after == &before, changed == &model, "{what} of {count}: ==");
                let expected = model_changes(&model, changed);
                assert_eq!(diffed(&before, after), expected, "{what} of {count}: diff");
            };
            for n in ids() {
                // A settled job changed in place (its reason).
                let mut after = before.clone();
                let mut changed = model.clone();
                let shared = after.get_mut(&id(n)).expect("held");
                Arc::make_mut(shared).finish_reason = Some("changed".into());
                changed.insert(id(n), shared.clone());
                check(&after, &changed, &format!("change job {n}"));
                // Removed; then a new job just above it.
                let mut after = before.clone();
                let mut changed = model.clone();
                after.remove(&id(n));
                changed.remove(&id(n));
                check(&after, &changed, &format!("remove job {n}"));
                after.insert(id(n + 1), job(n + 1, false));
                changed.insert(id(n + 1), job(n + 1, false));
                check(&after, &changed, &format!("replace job {n}"));
            }
        }
    }

    proptest! {
        /// Whatever the placement, the jobs read as a plain ordered map of the same
        /// changes would: lookups, id-ordered walks, counts, equality; and a placed job
        /// sits in the map its state calls for.
        #[test]
        fn reads_as_one_ordered_map(ops in proptest::collection::vec(op(), 0..60)) {
            let mut jobs = Jobs::new();
            let mut model: BTreeMap<JobId, Arc<Job>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Insert(n, live) => {
                        let was = model.insert(id(n), job(n, live));
                        prop_assert_eq!(jobs.insert(id(n), job(n, live)), was);
                        prop_assert_eq!(jobs.in_live_map(&id(n)), live);
                    }
                    Op::Flip(n) => {
                        if let Some(shared) = jobs.get_mut(&id(n)) {
                            let job = Arc::make_mut(shared);
                            job.status = if job.status == RunStatus::Submitted {
                                RunStatus::Completed
                            } else {
                                RunStatus::Submitted
                            };
                            model.insert(id(n), shared.clone());
                        }
                    }
                    Op::Place(n) => {
                        jobs.place(&id(n));
                        if let Some(job) = model.get(&id(n)) {
                            prop_assert_eq!(jobs.in_live_map(&id(n)), job_is_live(job));
                        }
                    }
                    Op::Remove(n) => {
                        prop_assert_eq!(jobs.remove(&id(n)), model.remove(&id(n)));
                    }
                }
                prop_assert_eq!(jobs.len(), model.len());
                prop_assert_eq!(jobs.is_empty(), model.is_empty());
                prop_assert!(jobs.iter().eq(model.iter()));
                for n in 0..12 {
                    prop_assert_eq!(jobs.get(&id(n)), model.get(&id(n)));
                    prop_assert_eq!(jobs.contains_key(&id(n)), model.contains_key(&id(n)));
                }
                let rebuilt: Jobs = model.iter().map(|(k, v)| (*k, v.clone())).collect();
                prop_assert_eq!(&rebuilt, &jobs);
            }
        }
    }
}
