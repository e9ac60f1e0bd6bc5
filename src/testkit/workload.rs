//! Reproducible random write workloads over the shop tables, for end-to-end tests.
//!
//! Contract: for a given seed and starting state, [`Workload`] yields the same transactions,
//! each a `Vec` of SQL statements to run between `BEGIN` and `COMMIT`. Applied in order to a
//! database holding exactly the starting state (empty shop tables, or the [`Sample`] given to
//! [`Workload::with_existing`]) with no other writer, every statement succeeds and every UPDATE
//! and DELETE hits rows that exist; [`Workload::row_counts`] then equals the tables' row counts.
//!
//! The mix covers what a change stream must get right: single- and multi-row INSERTs, status
//! transitions with their timestamps, address and remark changes in Chinese (with emoji),
//! columns set to NULL, `UPDATE … WHERE id IN (…)`, server-computed values (`CONCAT`), the same
//! row updated twice in one transaction, rows inserted and deleted in the same transaction,
//! DELETEs over both tables, and primary-key changes (`UPDATE event_log SET id = …`).

use std::collections::HashMap;

use chrono::{Duration as TimeDelta, NaiveDate, NaiveDateTime};
use rand::seq::SliceRandom;
use rand::Rng;

use super::sample::{datetime, event_insert, ident, money, opt_json, order_insert, quote, Event, Faker, Order, Sample};

/// Generator of transactions; see the module documentation.
#[derive(Debug)]
pub struct Workload {
    /// The database name, and the same quoted for use in SQL.
    db: String,
    qdb: String,
    faker: Faker,
    now: NaiveDateTime,
    orders: Rows<Order>,
    events: Rows<Event>,
    next_order_id: u64,
    next_event_id: u64,
}

/// What one transaction does; `None` from an operation means "no suitable rows right now".
#[derive(Debug, Clone, Copy)]
enum Op {
    NewOrder,
    NewOrders,
    Pay,
    Ship,
    Complete,
    Cancel,
    Refund,
    ChangeAddress,
    Remark,
    ClearColumns,
    AdjustPrice,
    BulkComplete,
    BulkRemark,
    DeleteOrder,
    DeleteEvents,
    Notes,
    EditEvent,
    MoveEventId,
    Ephemeral,
}

const MIX: &[(Op, u32)] = &[
    (Op::NewOrder, 16),
    (Op::NewOrders, 7),
    (Op::Pay, 12),
    (Op::Ship, 9),
    (Op::Complete, 6),
    (Op::Cancel, 4),
    (Op::Refund, 3),
    (Op::ChangeAddress, 6),
    (Op::Remark, 6),
    (Op::ClearColumns, 3),
    (Op::AdjustPrice, 2),
    (Op::BulkComplete, 4),
    (Op::BulkRemark, 3),
    (Op::DeleteOrder, 4),
    (Op::DeleteEvents, 3),
    (Op::Notes, 4),
    (Op::EditEvent, 2),
    (Op::MoveEventId, 1),
    (Op::Ephemeral, 2),
];

impl Workload {
    /// A workload over empty shop tables in database `db`.
    pub fn new(db: &str, seed: u64) -> Self {
        Self {
            db: db.to_owned(),
            qdb: ident(db),
            // Decorrelated from a `Sample` generated with the same seed.
            faker: Faker::new(seed.wrapping_add(0x9E37_79B9_7F4A_7C15)),
            now: NaiveDate::from_ymd_opt(2025, 1, 1)
                .unwrap()
                .and_hms_opt(9, 0, 0)
                .unwrap(),
            orders: Rows::default(),
            events: Rows::default(),
            next_order_id: 1,
            next_event_id: 1,
        }
    }

    /// Starts from tables that hold exactly `sample`.
    pub fn with_existing(mut self, sample: &Sample) -> Self {
        for o in &sample.orders {
            self.next_order_id = self.next_order_id.max(o.id + 1);
            self.now = self.now.max(o.updated_at + TimeDelta::days(1));
            self.orders.insert(o.id, o.clone());
        }
        for e in &sample.events {
            self.next_event_id = self.next_event_id.max(e.id + 1);
            self.events.insert(e.id, e.clone());
        }
        self
    }

    /// The next `count` transactions.
    pub fn transactions(&mut self, count: usize) -> Vec<Vec<String>> {
        (0..count).map(|_| self.next_transaction()).collect()
    }

    /// The next transaction: its statements, without `BEGIN`/`COMMIT`.
    pub fn next_transaction(&mut self) -> Vec<String> {
        self.now += TimeDelta::milliseconds(self.faker.rng.gen_range(1..5_000));
        // One transaction in ten bundles several operations, possibly on both tables.
        let parts = if self.faker.rng.gen_bool(0.1) {
            self.faker.rng.gen_range(2..=3)
        } else {
            1
        };
        let mut statements = Vec::new();
        for _ in 0..parts {
            let op = MIX.choose_weighted(&mut self.faker.rng, |m| m.1).unwrap().0;
            match self.apply(op) {
                Some(mut sql) => statements.append(&mut sql),
                None => statements.append(&mut self.new_orders(1)),
            }
        }
        statements
    }

    /// Rows the tables hold once every transaction so far is applied: (orders, event_log).
    pub fn row_counts(&self) -> (usize, usize) {
        (self.orders.len(), self.events.len())
    }

    fn apply(&mut self, op: Op) -> Option<Vec<String>> {
        match op {
            Op::NewOrder => Some(self.new_orders(1)),
            Op::NewOrders => {
                let n = self.faker.rng.gen_range(2..=5);
                Some(self.new_orders(n))
            }
            Op::Pay => self.transition(&["pending"], "paid"),
            Op::Ship => self.transition(&["paid"], "shipped"),
            Op::Complete => self.transition(&["shipped"], "completed"),
            Op::Cancel => self.transition(&["pending"], "cancelled"),
            Op::Refund => self.transition(&["paid", "shipped", "completed"], "refunded"),
            Op::ChangeAddress => self.change_address(),
            Op::Remark => self.remark(),
            Op::ClearColumns => self.clear_columns(),
            Op::AdjustPrice => self.adjust_price(),
            Op::BulkComplete => self.bulk_complete(),
            Op::BulkRemark => self.bulk_remark(),
            Op::DeleteOrder => self.delete_order(),
            Op::DeleteEvents => self.delete_events(),
            Op::Notes => self.notes(),
            Op::EditEvent => self.edit_event(),
            Op::MoveEventId => self.move_event_id(),
            Op::Ephemeral => Some(self.ephemeral()),
        }
    }

    fn new_orders(&mut self, n: usize) -> Vec<String> {
        let mut orders = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        for _ in 0..n {
            let order = self.faker.pending_order(self.next_order_id, self.now);
            self.next_order_id += 1;
            events.push(self.new_event(&order, "created"));
            orders.push(order);
        }
        let sql = vec![order_insert(&self.db, &orders), event_insert(&self.db, &events)];
        for o in orders {
            self.orders.insert(o.id, o);
        }
        for e in events {
            self.events.insert(e.id, e);
        }
        sql
    }

    fn transition(&mut self, from: &[&str], to: &'static str) -> Option<Vec<String>> {
        let id = self
            .orders
            .pick_where(&mut self.faker.rng, |o| from.contains(&o.status))?;
        let mut order = self.orders.get(id).clone();
        self.faker.advance(&mut order, to, self.now);
        let mut sets = vec![format!("status = {}", quote(to))];
        match to {
            "paid" => sets.push(format!("paid_at = {}", datetime(order.paid_at?, 0))),
            "shipped" => sets.push(format!("shipped_at = {}", datetime(order.shipped_at?, 0))),
            _ => {}
        }
        sets.push(format!("updated_at = {}", datetime(order.updated_at, 3)));
        let event = self.new_event(&order, to);
        Some(self.update_order(order, &sets.join(", "), event))
    }

    fn change_address(&mut self) -> Option<Vec<String>> {
        let id = self.orders.pick(&mut self.faker.rng)?;
        let mut order = self.orders.get(id).clone();
        order.address = self.faker.address();
        order.updated_at = self.now;
        let sets = format!(
            "address = {}, updated_at = {}",
            quote(&order.address),
            datetime(self.now, 3)
        );
        let event = self.new_event(&order, "address_changed");
        Some(self.update_order(order, &sets, event))
    }

    /// A new remark (or NULL); sometimes the row is updated twice in the transaction.
    fn remark(&mut self) -> Option<Vec<String>> {
        let id = self.orders.pick(&mut self.faker.rng)?;
        let mut sql = Vec::new();
        let times = if self.faker.rng.gen_bool(0.3) { 2 } else { 1 };
        for i in 0..times {
            let order = self.orders.get_mut(id);
            let (name, phone) = (order.buyer_name.clone(), order.buyer_phone.clone());
            let remark = self.faker.remark(&name, &phone);
            let at = self.now + TimeDelta::milliseconds(i);
            let value = remark.as_deref().map_or_else(|| "NULL".to_owned(), quote);
            sql.push(format!(
                "UPDATE {}.orders SET remark = {value}, updated_at = {} WHERE id = {id}",
                self.qdb,
                datetime(at, 3)
            ));
            let order = self.orders.get_mut(id);
            order.remark = remark;
            order.updated_at = at;
        }
        Some(sql)
    }

    fn clear_columns(&mut self) -> Option<Vec<String>> {
        let id = self.orders.pick(&mut self.faker.rng)?;
        let now = self.now;
        let order = self.orders.get_mut(id);
        order.items = None;
        order.remark = None;
        order.updated_at = now;
        Some(vec![format!(
            "UPDATE {}.orders SET items = NULL, remark = NULL, updated_at = {} WHERE id = {id}",
            self.qdb,
            datetime(now, 3)
        )])
    }

    fn adjust_price(&mut self) -> Option<Vec<String>> {
        let id = self.orders.pick_where(&mut self.faker.rng, |o| o.status == "pending")?;
        let mut order = self.orders.get(id).clone();
        order.amount = money(self.faker.rng.gen_range(0..10_000_000));
        order.updated_at = self.now;
        let sets = format!("amount = {}, updated_at = {}", order.amount, datetime(self.now, 3));
        let event = self.new_event(&order, "price_adjusted");
        Some(self.update_order(order, &sets, event))
    }

    fn bulk_complete(&mut self) -> Option<Vec<String>> {
        let ids = self.orders.pick_many(&mut self.faker.rng, 5, |o| o.status == "shipped");
        if ids.len() < 2 {
            return None;
        }
        let mut events = Vec::new();
        for &id in &ids {
            let mut order = self.orders.get(id).clone();
            order.status = "completed";
            order.updated_at = self.now;
            events.push(self.new_event(&order, "completed"));
            *self.orders.get_mut(id) = order;
        }
        let update = format!(
            "UPDATE {}.orders SET status = 'completed', updated_at = {} WHERE id IN ({})",
            self.qdb,
            datetime(self.now, 3),
            list(&ids)
        );
        let insert = event_insert(&self.db, &events);
        self.insert_events(events);
        Some(vec![update, insert])
    }

    /// A value the server computes: the generator only predicts it.
    fn bulk_remark(&mut self) -> Option<Vec<String>> {
        let n = self.faker.rng.gen_range(2..=6);
        let ids = self.orders.pick_many(&mut self.faker.rng, n, |_| true);
        if ids.is_empty() {
            return None;
        }
        for &id in &ids {
            let now = self.now;
            let order = self.orders.get_mut(id);
            order.remark = Some(format!("{} 【加急】", order.remark.as_deref().unwrap_or("")));
            order.updated_at = now;
        }
        Some(vec![format!(
            "UPDATE {}.orders SET remark = CONCAT(IFNULL(remark, ''), ' 【加急】'), updated_at = {} WHERE id IN ({})",
            self.qdb,
            datetime(self.now, 3),
            list(&ids)
        )])
    }

    fn delete_order(&mut self) -> Option<Vec<String>> {
        let id = self.orders.pick(&mut self.faker.rng)?;
        self.orders.remove(id);
        let doomed: Vec<u64> = self
            .events
            .ids
            .iter()
            .copied()
            .filter(|e| self.events.get(*e).order_id == id)
            .collect();
        for e in doomed {
            self.events.remove(e);
        }
        Some(vec![
            format!("DELETE FROM {}.event_log WHERE order_id = {id}", self.qdb),
            format!("DELETE FROM {}.orders WHERE id = {id}", self.qdb),
        ])
    }

    fn delete_events(&mut self) -> Option<Vec<String>> {
        let n = self.faker.rng.gen_range(1..=4);
        let ids = self.events.pick_many(&mut self.faker.rng, n, |_| true);
        if ids.is_empty() {
            return None;
        }
        for &id in &ids {
            self.events.remove(id);
        }
        Some(vec![format!(
            "DELETE FROM {}.event_log WHERE id IN ({})",
            self.qdb,
            list(&ids)
        )])
    }

    /// Staff notes on a few orders, in one multi-row INSERT.
    fn notes(&mut self) -> Option<Vec<String>> {
        let n = self.faker.rng.gen_range(2..=4);
        let ids = self.orders.pick_many(&mut self.faker.rng, n, |_| true);
        if ids.is_empty() {
            return None;
        }
        let events: Vec<Event> = ids
            .iter()
            .map(|&id| {
                let order = self.orders.get(id).clone();
                self.new_event(&order, "note")
            })
            .collect();
        let sql = event_insert(&self.db, &events);
        self.insert_events(events);
        Some(vec![sql])
    }

    fn edit_event(&mut self) -> Option<Vec<String>> {
        let id = self.events.pick(&mut self.faker.rng)?;
        let event = self.events.get_mut(id);
        event.payload =
            serde_json::json!({ "note": "客服补充：买家要求改为顺丰😊", "edited": true, "previous": event.event_type });
        event.operator_id = None;
        let payload = opt_json(Some(&event.payload));
        Some(vec![format!(
            "UPDATE {}.event_log SET payload = {payload}, operator_id = NULL WHERE id = {id}",
            self.qdb
        )])
    }

    /// Changes a primary key: the index must drop the old document and create the new one.
    fn move_event_id(&mut self) -> Option<Vec<String>> {
        let old = self.events.pick(&mut self.faker.rng)?;
        let new = self.next_event_id;
        self.next_event_id += 1;
        let mut event = self.events.remove(old);
        event.id = new;
        self.events.insert(new, event);
        Some(vec![format!(
            "UPDATE {}.event_log SET id = {new} WHERE id = {old}",
            self.qdb
        )])
    }

    /// An order that is created, changed and deleted inside one transaction: it never becomes
    /// visible, so it must not end up in the index either.
    fn ephemeral(&mut self) -> Vec<String> {
        let mut sql = self.new_orders(1);
        let id = self.next_order_id - 1;
        let created = self.next_event_id - 1;
        self.orders.remove(id);
        self.events.remove(created);
        sql.push(format!(
            "UPDATE {}.orders SET status = 'cancelled' WHERE id = {id}",
            self.qdb
        ));
        sql.push(format!("DELETE FROM {}.event_log WHERE order_id = {id}", self.qdb));
        sql.push(format!("DELETE FROM {}.orders WHERE id = {id}", self.qdb));
        sql
    }

    /// Replaces the order row and records `event`, as an UPDATE plus an INSERT.
    fn update_order(&mut self, order: Order, sets: &str, event: Event) -> Vec<String> {
        let sql = vec![
            format!("UPDATE {}.orders SET {sets} WHERE id = {}", self.qdb, order.id),
            event_insert(&self.db, std::slice::from_ref(&event)),
        ];
        let id = order.id;
        *self.orders.get_mut(id) = order;
        self.insert_events(vec![event]);
        sql
    }

    fn new_event(&mut self, order: &Order, kind: &'static str) -> Event {
        let event = self
            .faker
            .event(self.next_event_id, order, kind, order.updated_at.max(self.now));
        self.next_event_id += 1;
        event
    }

    fn insert_events(&mut self, events: Vec<Event>) {
        for e in events {
            self.events.insert(e.id, e);
        }
    }
}

fn list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Live rows by id, with uniform random picks. Picks depend only on the insertion and removal
/// history (never on hash order), which keeps the workload reproducible.
#[derive(Debug)]
struct Rows<T> {
    ids: Vec<u64>,
    rows: HashMap<u64, (usize, T)>,
}

impl<T> Default for Rows<T> {
    fn default() -> Self {
        Self {
            ids: Vec::new(),
            rows: HashMap::new(),
        }
    }
}

impl<T> Rows<T> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn insert(&mut self, id: u64, row: T) {
        let previous = self.rows.insert(id, (self.ids.len(), row));
        assert!(previous.is_none(), "workload model: id {id} inserted twice");
        self.ids.push(id);
    }

    fn remove(&mut self, id: u64) -> T {
        let (index, row) = self.rows.remove(&id).expect("workload model: removing a missing id");
        self.ids.swap_remove(index);
        if let Some(&moved) = self.ids.get(index) {
            self.rows.get_mut(&moved).expect("moved id is live").0 = index;
        }
        row
    }

    fn get(&self, id: u64) -> &T {
        &self.rows[&id].1
    }

    fn get_mut(&mut self, id: u64) -> &mut T {
        &mut self.rows.get_mut(&id).expect("workload model: missing id").1
    }

    fn pick(&self, rng: &mut impl Rng) -> Option<u64> {
        self.ids.choose(rng).copied()
    }

    /// A random id whose row satisfies `pred`, found by sampling (so it may miss rare rows).
    fn pick_where(&self, rng: &mut impl Rng, pred: impl Fn(&T) -> bool) -> Option<u64> {
        (0..40).filter_map(|_| self.pick(rng)).find(|id| pred(self.get(*id)))
    }

    /// Up to `n` distinct ids satisfying `pred`, in ascending order.
    fn pick_many(&self, rng: &mut impl Rng, n: usize, pred: impl Fn(&T) -> bool) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..n * 8 {
            if ids.len() == n {
                break;
            }
            match self.pick(rng) {
                Some(id) if !ids.contains(&id) && pred(self.get(id)) => ids.push(id),
                Some(_) => {}
                None => break,
            }
        }
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_transactions() {
        let sample = Sample::generate(1, 30);
        let a = Workload::new("db", 9).with_existing(&sample).transactions(300);
        let b = Workload::new("db", 9).with_existing(&sample).transactions(300);
        let c = Workload::new("db", 10).with_existing(&sample).transactions(300);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn the_mix_covers_every_kind_of_change() {
        let mut workload = Workload::new("db", 3);
        let all: Vec<String> = workload.transactions(2_000).into_iter().flatten().collect();
        let has = |needle: &str| all.iter().any(|s| s.contains(needle));
        assert!(has("INSERT INTO `db`.orders") && has("), ("), "multi-row inserts");
        assert!(has("UPDATE `db`.orders SET status = 'paid', paid_at"));
        assert!(has("WHERE id IN ("));
        assert!(has("remark = NULL") && has("items = NULL"));
        assert!(has("CONCAT(IFNULL(remark"));
        assert!(has("DELETE FROM `db`.orders") && has("DELETE FROM `db`.event_log WHERE id IN"));
        assert!(has("UPDATE `db`.event_log SET id = "));
        let (orders, events) = workload.row_counts();
        assert!(orders > 100 && events > orders, "{orders} orders, {events} events");
    }

    #[test]
    fn rows_keep_indexes_consistent_across_removals() {
        let mut rows = Rows::default();
        for id in 1..=5 {
            rows.insert(id, id * 10);
        }
        assert_eq!(rows.remove(2), 20);
        assert_eq!(rows.remove(5), 50);
        assert_eq!(*rows.get(4), 40);
        rows.insert(2, 21);
        let mut ids = rows.ids.clone();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4]);
        for id in ids {
            assert_eq!(rows.ids[rows.rows[&id].0], id);
        }
    }
}
