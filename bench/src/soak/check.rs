//! The checker: reads the whole log (every event ever appended, kept by a trigger beside
//! the pruned `events` table), what was pruned and when, the rows as the API returns them at
//! the end, and every client's record, and proves the stream's promise or lists where it was
//! broken. It decides views itself, from the log, with the list's rules: it shares no code
//! with the server.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::Value;

/// One event of the log, as the database holds it.
#[derive(Clone, Debug)]
pub struct LogEvent {
    pub id: i64,
    pub entity: String,
    pub kind: String,
    pub data: Value,
    /// When the transaction appended it (milliseconds since the epoch; it commits after).
    pub at_ms: f64,
}

/// What a subscriber asked to see.
#[derive(Clone, Debug, PartialEq)]
pub enum Filter {
    All,
    Entity(String),
    /// `entity` and `types` together.
    Types(String, Vec<String>),
    View(View),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub category: Option<String>,
    pub q: Option<String>,
    pub min_cents: Option<i64>,
    pub max_cents: Option<i64>,
}

impl View {
    /// Whether a Funko as an event's `data` shows it is in the view.
    pub fn matches(&self, funko: &Value) -> bool {
        let text = |k: &str| funko[k].as_str().unwrap_or("").to_lowercase();
        let cents = (funko["price"].as_f64().unwrap_or(-1.0) * 100.0).round() as i64;
        !funko["isDeleted"].as_bool().unwrap_or(false)
            && self
                .category
                .as_ref()
                .is_none_or(|c| text("category") == c.to_lowercase())
            && self.q.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                text("name").contains(&q) || text("description").contains(&q)
            })
            && self.min_cents.is_none_or(|m| cents >= m)
            && self.max_cents.is_none_or(|m| cents <= m)
    }

    /// The query string of the view (`category=Marvel&q=blue`).
    pub fn query(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = &self.category {
            parts.push(format!("category={c}"));
        }
        if let Some(q) = &self.q {
            parts.push(format!("q={q}"));
        }
        if let Some(m) = self.min_cents {
            parts.push(format!("minPrice={}", m as f64 / 100.0));
        }
        if let Some(m) = self.max_cents {
            parts.push(format!("maxPrice={}", m as f64 / 100.0));
        }
        parts.join("&")
    }
}

impl Filter {
    pub fn name(&self) -> String {
        match self {
            Self::All => "all".into(),
            Self::Entity(e) => format!("entity={e}"),
            Self::Types(e, t) => format!("entity={e}&types={}", t.join(",")),
            Self::View(v) => v.query(),
        }
    }
}

/// What a subscriber received, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Item {
    /// A change event (with its view tag on a view).
    Event {
        id: i64,
        view: Option<String>,
        at_ms: f64,
    },
    /// The server moved the cursor past events the filter hid (SSE `id:` alone, a poll's
    /// `cursor`).
    Cursor(i64),
    Reset {
        cursor: i64,
        at_ms: f64,
    },
    /// The subscriber lost its connection (or found it silent) and goes to reconnect.
    Lost {
        at_ms: f64,
    },
}

#[derive(Clone, Debug)]
pub struct SubRecord {
    pub name: String,
    pub transport: &'static str,
    pub filter: Filter,
    /// The cursor it first subscribed after.
    pub start: i64,
    pub items: Vec<Item>,
    pub connects: u64,
    /// Socket.IO: reconnections the server recovered (the same `pid` came back).
    pub recovered: u64,
    /// Times it stayed away longer than retention might keep its place.
    pub aways: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOp {
    Create,
    Update,
    Delete,
}

/// What became of a write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx.
    Acked,
    /// No answer (timeout, connection lost) or a 5xx: it may or may not have committed.
    Unknown,
    /// A 4xx: it must not have committed.
    Refused(u16),
}

#[derive(Clone, Debug)]
pub struct WriteRecord {
    pub op: WriteOp,
    /// Create and update: the unique name the write gave the Funko.
    pub name: String,
    /// Update and delete: the Funko's id.
    pub funko: Option<i64>,
    pub outcome: Outcome,
}

/// Everything the checker reads.
pub struct Evidence<'a> {
    pub log: &'a [LogEvent],
    /// Event id → when the transaction that pruned it ran (ms).
    pub pruned: &'a HashMap<i64, f64>,
    /// The ids still in `events` at the end.
    pub remaining: &'a [i64],
    /// (entity, id) → the resource as `GET` returns it at the end.
    pub rows: &'a HashMap<(String, i64), Value>,
    /// The rows before the first write (the schema's seed): they have no events.
    pub seeded: &'a HashMap<(String, i64), Value>,
    pub writes: &'a [WriteRecord],
    pub subs: &'a [SubRecord],
    /// Every subscriber must have caught up to this event (a write after the faults stopped
    /// that every filter sees).
    pub fence: i64,
    /// Names the harness wrote itself (seed and fence), not by a writer.
    pub own_names: &'a HashSet<String>,
}

#[derive(Clone, Debug, Default)]
pub struct TransportFigures {
    pub subscribers: usize,
    pub delivered: u64,
    pub reconnects: u64,
    pub recovered: u64,
    pub aways: u64,
    pub resets: u64,
    /// Commit (append) to receipt, the longest, ms.
    pub max_lag_ms: f64,
    /// From losing a connection to holding every event it should see that committed before.
    pub max_catch_up_ms: f64,
}

#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub acked: u64,
    pub unknown: u64,
    pub unknown_committed: u64,
    pub refused: u64,
    pub losses: u64,
    pub duplicates: u64,
    pub reorders: u64,
    /// Events delivered that the filter should have hidden, with a wrong view tag, or that
    /// no write made.
    pub wrong: u64,
    pub unjustified_resets: u64,
    pub justified_resets: u64,
    /// Events a justified reset skipped over.
    pub skipped_by_resets: u64,
    pub rows_checked: u64,
    pub rows_mismatched: u64,
    pub log_events: u64,
    pub pruned: u64,
    pub transports: BTreeMap<&'static str, TransportFigures>,
    /// The first problems found, described.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.losses == 0
            && self.duplicates == 0
            && self.reorders == 0
            && self.wrong == 0
            && self.unjustified_resets == 0
            && self.rows_mismatched == 0
            && self.problems.is_empty()
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < 40 {
            self.problems.push(text);
        }
    }
}

/// An event a filter lets through, with the view tag it must carry.
#[derive(Clone, Debug)]
struct Expected {
    id: i64,
    view: Option<&'static str>,
    at_ms: f64,
}

/// The events `filter` sees, in log order.
fn expected(log: &[LogEvent], filter: &Filter) -> Vec<Expected> {
    let mut before: HashMap<i64, bool> = HashMap::new();
    let mut out = Vec::new();
    for e in log {
        let keep = match filter {
            Filter::All => Some(None),
            Filter::Entity(entity) => (e.entity == *entity).then_some(None),
            Filter::Types(entity, types) => {
                (e.entity == *entity && types.contains(&e.kind)).then_some(None)
            }
            Filter::View(view) => {
                if e.entity != "FUNKOS" {
                    None
                } else {
                    let id = e.data["id"].as_i64().unwrap_or(-1);
                    let was = before.get(&id).copied().unwrap_or(false);
                    let is = view.matches(&e.data);
                    before.insert(id, is);
                    match (was, is) {
                        (true, true) => Some(Some("update")),
                        (false, true) => Some(Some("enter")),
                        (true, false) => Some(Some("leave")),
                        (false, false) => None,
                    }
                }
            }
        };
        if let Some(view) = keep {
            out.push(Expected {
                id: e.id,
                view,
                at_ms: e.at_ms,
            });
        }
    }
    out
}

pub fn check(ev: &Evidence<'_>) -> Verdict {
    let mut v = Verdict {
        log_events: ev.log.len() as u64,
        pruned: ev.pruned.len() as u64,
        ..Verdict::default()
    };
    check_log(ev, &mut v);
    check_writes(ev, &mut v);
    check_rows(ev, &mut v);
    for sub in ev.subs {
        check_subscriber(ev, sub, &mut v);
    }
    v
}

/// The log's ids increase; what is left in `events` is the log less what was pruned, and
/// pruning took only the oldest.
fn check_log(ev: &Evidence<'_>, v: &mut Verdict) {
    if ev.log.windows(2).any(|w| w[0].id >= w[1].id) {
        v.problem("the log's ids do not increase".into());
    }
    let remaining: HashSet<i64> = ev.remaining.iter().copied().collect();
    let oldest_left = ev.remaining.iter().copied().min().unwrap_or(i64::MAX);
    for e in ev.log {
        let pruned = ev.pruned.contains_key(&e.id);
        let left = remaining.contains(&e.id);
        if pruned == left {
            v.problem(format!(
                "event {} is {} in events and {} pruned",
                e.id,
                if left { "still" } else { "not" },
                if pruned { "was" } else { "was not" }
            ));
        }
        if pruned && e.id > oldest_left {
            v.problem(format!(
                "event {} was pruned while the older {oldest_left} was kept",
                e.id
            ));
        }
    }
    if remaining.len() + ev.pruned.len() != ev.log.len() {
        v.problem(format!(
            "{} events left and {} pruned, but {} appended",
            remaining.len(),
            ev.pruned.len(),
            ev.log.len()
        ));
    }
}

/// Every acknowledged write is in the log exactly once; an unknown one at most once; a
/// refused one not at all; every Funko event comes from some write.
fn check_writes(ev: &Evidence<'_>, v: &mut Verdict) {
    let mut by_name: HashMap<&str, u64> = HashMap::new();
    let mut deletes: HashMap<i64, u64> = HashMap::new();
    for e in ev.log.iter().filter(|e| e.entity == "FUNKOS") {
        if e.kind == "DELETE" {
            *deletes
                .entry(e.data["id"].as_i64().unwrap_or(-1))
                .or_default() += 1;
        } else if let Some(name) = e.data["name"].as_str() {
            *by_name.entry(name).or_default() += 1;
        }
    }
    let mut attempted: HashSet<&str> = HashSet::new();
    for w in ev.writes {
        let found = match w.op {
            WriteOp::Delete => deletes.get(&w.funko.unwrap_or(-1)).copied().unwrap_or(0),
            WriteOp::Create | WriteOp::Update => {
                attempted.insert(&w.name);
                by_name.get(w.name.as_str()).copied().unwrap_or(0)
            }
        };
        let what = || format!("{:?} {} (Funko {:?})", w.op, w.name, w.funko);
        match w.outcome {
            Outcome::Acked => {
                v.acked += 1;
                if found == 0 {
                    v.losses += 1;
                    v.problem(format!("acknowledged write {} is not in the log", what()));
                }
            }
            Outcome::Unknown => {
                v.unknown += 1;
                v.unknown_committed += u64::from(found > 0);
            }
            Outcome::Refused(status) => {
                v.refused += 1;
                if found > 0 && w.op != WriteOp::Delete {
                    v.wrong += 1;
                    v.problem(format!(
                        "write {} was refused ({status}) but committed",
                        what()
                    ));
                }
            }
        }
        if found > 1 {
            v.duplicates += found - 1;
            v.problem(format!("write {} is in the log {found} times", what()));
        }
    }
    for e in ev
        .log
        .iter()
        .filter(|e| e.entity == "FUNKOS" && e.kind != "DELETE")
    {
        let name = e.data["name"].as_str().unwrap_or("");
        if !attempted.contains(name) && !ev.own_names.contains(name) {
            v.wrong += 1;
            v.problem(format!("event {} ({name}) comes from no write", e.id));
        }
    }
}

/// Every row is what its last event says, and every row has events.
fn check_rows(ev: &Evidence<'_>, v: &mut Verdict) {
    let mut last: HashMap<(String, i64), &LogEvent> = HashMap::new();
    for e in ev.log {
        last.insert((e.entity.clone(), e.data["id"].as_i64().unwrap_or(-1)), e);
    }
    for (key, row) in ev.rows {
        v.rows_checked += 1;
        match last.get(key) {
            Some(e) if e.data == *row => {}
            Some(e) => {
                v.rows_mismatched += 1;
                v.problem(format!(
                    "{} {} is {row} but its last event {} says {}",
                    key.0, key.1, e.id, e.data
                ));
            }
            None if ev.seeded.get(key) == Some(row) => {}
            None => {
                v.rows_mismatched += 1;
                v.problem(format!("{} {} has no event and changed", key.0, key.1));
            }
        }
    }
    for key in last.keys() {
        if !ev.rows.contains_key(key) {
            v.rows_mismatched += 1;
            v.problem(format!("{} {} has events but no row", key.0, key.1));
        }
    }
}

fn check_subscriber(ev: &Evidence<'_>, sub: &SubRecord, v: &mut Verdict) {
    let want = expected(ev.log, &sub.filter);
    let lag_of: HashMap<i64, f64> = want.iter().map(|e| (e.id, e.at_ms)).collect();
    let in_log: HashSet<i64> = ev.log.iter().map(|e| e.id).collect();
    let between = |lo: i64, hi: i64| -> &[Expected] {
        let a = want.partition_point(|e| e.id <= lo);
        let b = want.partition_point(|e| e.id <= hi);
        &want[a..b.max(a)]
    };
    let mut figures = v.transports.remove(sub.transport).unwrap_or_default();
    figures.subscribers += 1;
    figures.reconnects += sub.connects.saturating_sub(1);
    figures.recovered += sub.recovered;
    figures.aways += sub.aways;
    let who = format!("{} {} ({})", sub.transport, sub.name, sub.filter.name());
    let mut cur = sub.start;
    let mut seen: HashSet<i64> = HashSet::new();
    // A loss of connection not caught up yet: when, and the event it must reach.
    let mut behind: Option<(f64, i64)> = None;
    let catch_up =
        |cur: i64, now: f64, behind: &mut Option<(f64, i64)>, f: &mut TransportFigures| {
            if let Some((since, target)) = *behind
                && cur >= target
            {
                f.max_catch_up_ms = f.max_catch_up_ms.max(now - since);
                *behind = None;
            }
        };
    for item in &sub.items {
        match item {
            Item::Event { id, view, at_ms } => {
                let id = *id;
                if id <= cur {
                    if seen.contains(&id) {
                        v.duplicates += 1;
                        v.problem(format!("{who}: event {id} again (at cursor {cur})"));
                    } else {
                        v.reorders += 1;
                        v.problem(format!("{who}: event {id} after {cur}"));
                    }
                    continue;
                }
                figures.delivered += 1;
                let missed = between(cur, id - 1);
                if !missed.is_empty() {
                    v.losses += missed.len() as u64;
                    v.problem(format!(
                        "{who}: missed {} events ({}..={}) before {id}",
                        missed.len(),
                        missed[0].id,
                        missed[missed.len() - 1].id
                    ));
                }
                match want.binary_search_by_key(&id, |e| e.id) {
                    Ok(at) if want[at].view == view.as_deref() => {}
                    Ok(at) => {
                        v.wrong += 1;
                        v.problem(format!(
                            "{who}: event {id} tagged {view:?}, not {:?}",
                            want[at].view
                        ));
                    }
                    Err(_) if in_log.contains(&id) => {
                        v.wrong += 1;
                        v.problem(format!("{who}: event {id} is outside its filter"));
                    }
                    Err(_) => {
                        v.wrong += 1;
                        v.problem(format!("{who}: event {id} is not in the log"));
                    }
                }
                if let Some(committed) = lag_of.get(&id) {
                    figures.max_lag_ms = figures.max_lag_ms.max(at_ms - committed);
                }
                cur = id;
                seen.insert(id);
                catch_up(cur, *at_ms, &mut behind, &mut figures);
            }
            Item::Cursor(c) => {
                if *c < cur {
                    v.reorders += 1;
                    v.problem(format!("{who}: cursor went back from {cur} to {c}"));
                    continue;
                }
                let missed = between(cur, *c);
                if !missed.is_empty() {
                    v.losses += missed.len() as u64;
                    v.problem(format!(
                        "{who}: cursor moved to {c} over {} undelivered events from {}",
                        missed.len(),
                        missed[0].id
                    ));
                }
                cur = *c;
            }
            Item::Reset { cursor, at_ms } => {
                figures.resets += 1;
                // Justified when the event right after the cursor was pruned before it came.
                let next = ev.log.iter().find(|e| e.id > cur).map(|e| e.id);
                let pruned_at = next.and_then(|id| ev.pruned.get(&id));
                if pruned_at.is_some_and(|t| t <= at_ms) {
                    v.justified_resets += 1;
                    v.skipped_by_resets += between(cur, *cursor).len() as u64;
                } else {
                    v.unjustified_resets += 1;
                    v.problem(format!(
                        "{who}: reset at cursor {cur} to {cursor}, but event {next:?} was not \
                         pruned before it"
                    ));
                }
                cur = (*cursor).max(cur);
                catch_up(cur, *at_ms, &mut behind, &mut figures);
            }
            Item::Lost { at_ms } => {
                if behind.is_none() {
                    let target = want
                        .iter()
                        .take_while(|e| e.at_ms <= *at_ms)
                        .last()
                        .map_or(cur, |e| e.id);
                    behind = Some((*at_ms, target));
                    catch_up(cur, *at_ms, &mut behind, &mut figures);
                }
            }
        }
    }
    let missed = between(cur, ev.fence);
    if !missed.is_empty() {
        v.losses += missed.len() as u64;
        v.problem(format!(
            "{who}: stopped at cursor {cur}, short of the final event {} ({} events never came)",
            ev.fence,
            missed.len()
        ));
    }
    v.transports.insert(sub.transport, figures);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn funko(id: i64, name: &str, price: f64, category: &str, deleted: bool) -> Value {
        json!({"id": id, "name": name, "description": "", "price": price,
               "category": category, "isDeleted": deleted})
    }

    fn event(id: i64, kind: &str, data: Value) -> LogEvent {
        LogEvent {
            id,
            entity: "FUNKOS".into(),
            kind: kind.into(),
            data,
            at_ms: id as f64 * 10.0,
        }
    }

    /// A log of five events: Funko 1 created, moved out of Marvel, deleted; Funko 2 created.
    fn log() -> Vec<LogEvent> {
        vec![
            event(1, "CREATE", funko(1, "a", 10.0, "Marvel", false)),
            event(2, "CREATE", funko(2, "b", 12.0, "Marvel", false)),
            event(3, "UPDATE", funko(1, "c", 10.0, "DC", false)),
            event(5, "UPDATE", funko(2, "d", 13.0, "Marvel", false)),
            event(6, "DELETE", funko(2, "d", 13.0, "Marvel", true)),
        ]
    }

    fn ev(id: i64) -> Item {
        Item::Event {
            id,
            view: None,
            at_ms: 100.0,
        }
    }

    fn run(
        log: &[LogEvent],
        pruned: &HashMap<i64, f64>,
        items: Vec<Item>,
        filter: Filter,
    ) -> Verdict {
        let remaining: Vec<i64> = log
            .iter()
            .map(|e| e.id)
            .filter(|id| !pruned.contains_key(id))
            .collect();
        let mut rows = HashMap::new();
        rows.insert(("FUNKOS".into(), 1), funko(1, "c", 10.0, "DC", false));
        rows.insert(("FUNKOS".into(), 2), funko(2, "d", 13.0, "Marvel", true));
        let own: HashSet<String> = ["a", "b", "c", "d"].iter().map(|s| s.to_string()).collect();
        let subs = vec![SubRecord {
            name: "s".into(),
            transport: "sse",
            filter,
            start: 0,
            items,
            connects: 1,
            recovered: 0,
            aways: 0,
        }];
        check(&Evidence {
            log,
            pruned,
            remaining: &remaining,
            rows: &rows,
            seeded: &HashMap::new(),
            writes: &[],
            subs: &subs,
            fence: 6,
            own_names: &own,
        })
    }

    #[test]
    fn the_whole_log_in_order_passes() {
        let v = run(
            &log(),
            &HashMap::new(),
            [1, 2, 3, 5, 6].map(ev).to_vec(),
            Filter::All,
        );
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!(v.transports["sse"].delivered, 5);
    }

    #[test]
    fn a_missing_event_is_a_loss() {
        let v = run(
            &log(),
            &HashMap::new(),
            [1, 2, 5, 6].map(ev).to_vec(),
            Filter::All,
        );
        assert_eq!(v.losses, 1);
        assert!(!v.ok());
    }

    #[test]
    fn a_repeated_event_is_a_duplicate_and_an_older_one_a_reorder() {
        let v = run(
            &log(),
            &HashMap::new(),
            [1, 2, 2, 3, 5, 6].map(ev).to_vec(),
            Filter::All,
        );
        assert_eq!((v.duplicates, v.reorders, v.losses), (1, 0, 0));
        let v = run(
            &log(),
            &HashMap::new(),
            [1, 3, 2, 5, 6].map(ev).to_vec(),
            Filter::All,
        );
        assert_eq!((v.losses, v.reorders), (1, 1));
    }

    #[test]
    fn stopping_short_of_the_fence_is_a_loss() {
        let v = run(
            &log(),
            &HashMap::new(),
            [1, 2, 3].map(ev).to_vec(),
            Filter::All,
        );
        assert_eq!(v.losses, 2);
    }

    #[test]
    fn a_cursor_over_undelivered_events_is_a_loss() {
        let items = vec![ev(1), ev(2), Item::Cursor(5), ev(6)];
        let v = run(&log(), &HashMap::new(), items, Filter::All);
        assert_eq!(v.losses, 2);
    }

    #[test]
    fn a_reset_is_justified_only_by_pruning_before_it() {
        let pruned: HashMap<i64, f64> = [(1, 50.0), (2, 50.0), (3, 50.0)].into();
        let reset = |at_ms| Item::Reset { cursor: 5, at_ms };
        let v = run(&log(), &pruned, vec![reset(60.0), ev(6)], Filter::All);
        assert!(v.ok(), "{:?}", v.problems);
        assert_eq!((v.justified_resets, v.skipped_by_resets), (1, 4));
        // The same reset before the pruning happened, or with nothing pruned.
        let v = run(&log(), &pruned, vec![reset(40.0), ev(6)], Filter::All);
        assert_eq!(v.unjustified_resets, 1);
        let v = run(
            &log(),
            &HashMap::new(),
            vec![reset(60.0), ev(6)],
            Filter::All,
        );
        assert_eq!(v.unjustified_resets, 1);
    }

    #[test]
    fn a_view_sees_enter_update_and_leave_and_nothing_else() {
        let view = Filter::View(View {
            category: Some("marvel".into()),
            ..View::default()
        });
        let tagged = |id, tag: &str| Item::Event {
            id,
            view: Some(tag.into()),
            at_ms: 100.0,
        };
        let right = vec![
            tagged(1, "enter"),
            tagged(2, "enter"),
            tagged(3, "leave"),
            tagged(5, "update"),
            tagged(6, "leave"),
        ];
        let v = run(&log(), &HashMap::new(), right.clone(), view.clone());
        assert!(v.ok(), "{:?}", v.problems);
        let mut wrong_tag = right.clone();
        wrong_tag[3] = tagged(5, "enter");
        assert_eq!(
            run(&log(), &HashMap::new(), wrong_tag, view.clone()).wrong,
            1
        );
        let price = Filter::View(View {
            min_cents: Some(1200),
            max_cents: Some(1250),
            ..View::default()
        });
        let v = run(
            &log(),
            &HashMap::new(),
            vec![tagged(2, "enter"), tagged(5, "leave")],
            price.clone(),
        );
        assert!(v.ok(), "{:?}", v.problems);
        // Event 1 (price 10) is outside the view.
        let v = run(
            &log(),
            &HashMap::new(),
            vec![tagged(1, "enter"), tagged(2, "enter"), tagged(5, "leave")],
            price,
        );
        assert_eq!(v.wrong, 1);
    }

    #[test]
    fn writes_are_found_once_and_rows_match_their_last_event() {
        let log = log();
        let own = HashSet::new();
        let write = |op, name: &str, funko, outcome| WriteRecord {
            op,
            name: name.into(),
            funko,
            outcome,
        };
        let writes = vec![
            write(WriteOp::Create, "a", None, Outcome::Acked),
            write(WriteOp::Create, "b", None, Outcome::Unknown),
            write(WriteOp::Update, "c", Some(1), Outcome::Acked),
            write(WriteOp::Update, "d", Some(2), Outcome::Acked),
            write(WriteOp::Delete, "", Some(2), Outcome::Acked),
            write(WriteOp::Create, "lost", None, Outcome::Acked),
        ];
        let mut rows = HashMap::new();
        rows.insert(("FUNKOS".into(), 1), funko(1, "c", 10.0, "DC", false));
        rows.insert(("FUNKOS".into(), 2), funko(2, "d", 13.0, "Marvel", false));
        let ids: Vec<i64> = log.iter().map(|e| e.id).collect();
        let v = check(&Evidence {
            log: &log,
            pruned: &HashMap::new(),
            remaining: &ids,
            rows: &rows,
            seeded: &HashMap::new(),
            writes: &writes,
            subs: &[],
            fence: 6,
            own_names: &own,
        });
        assert_eq!((v.acked, v.unknown, v.unknown_committed), (5, 1, 1));
        assert_eq!(v.losses, 1, "{:?}", v.problems);
        // Funko 2's row is not deleted although its last event is its DELETE.
        assert_eq!(v.rows_mismatched, 1);
    }
}
