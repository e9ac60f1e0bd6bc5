//! Deterministic, realistic Chinese sample data for the demo `shop` schema
//! (`schema/shop.sql`), rendered as SQL.
//!
//! Contract: the same seed gives the same rows and the same SQL, byte for byte (for a given
//! `rand` 0.8 `StdRng`). Rows carry explicit ids, so a test knows exactly what the tables hold.
//! Data is deliberately awkward for a search index: colliding names and phone suffixes, 4-byte
//! characters (emoji, `𠮷`), empty-string vs NULL remarks, quotes, backslashes and newlines in
//! text, and a lifecycle whose timestamps are consistent with the status. String literals are
//! escaped for the server's default `sql_mode` (backslash escapes on, i.e. no
//! `NO_BACKSLASH_ESCAPES`).

use chrono::{Duration as TimeDelta, NaiveDate, NaiveDateTime, Timelike};
use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use anyhow::{Context, Result};

/// `schema/shop.sql`.
pub const SHOP_SCHEMA: &str = include_str!("../../schema/shop.sql");

/// Members of `orders.status`, in lifecycle order.
pub const ORDER_STATUSES: [&str; 6] = ["pending", "paid", "shipped", "completed", "cancelled", "refunded"];

/// Column lists, in the order the INSERT statements use.
const ORDER_COLUMNS: &str = "id, order_no, buyer_name, buyer_phone, address, amount, status, created_at, \
                             paid_at, shipped_at, updated_at, remark, items";
const EVENT_COLUMNS: &str = "id, order_id, event_type, payload, operator_id, occurred_at";

/// One `orders` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub id: u64,
    pub order_no: String,
    pub buyer_name: String,
    pub buyer_phone: String,
    pub address: String,
    /// Exact decimal with two digits after the point, e.g. `"7048.00"`.
    pub amount: String,
    pub status: &'static str,
    pub created_at: NaiveDateTime,
    pub paid_at: Option<NaiveDateTime>,
    pub shipped_at: Option<NaiveDateTime>,
    /// Millisecond precision (`DATETIME(3)`).
    pub updated_at: NaiveDateTime,
    /// `Some("")` occurs too: an empty remark is not a NULL one.
    pub remark: Option<String>,
    pub items: Option<Value>,
}

/// One `event_log` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: u64,
    pub order_id: u64,
    pub event_type: &'static str,
    pub payload: Value,
    pub operator_id: Option<i32>,
    /// Millisecond precision (`DATETIME(3)`).
    pub occurred_at: NaiveDateTime,
}

/// A generated data set: orders with ids `1..=n` and their event history.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub orders: Vec<Order>,
    pub events: Vec<Event>,
}

impl Sample {
    /// `orders` orders (ids 1..=orders) with 1–5 events each (ids 1.., in time order per order).
    pub fn generate(seed: u64, orders: usize) -> Self {
        let mut faker = Faker::new(seed);
        let base = NaiveDate::from_ymd_opt(2024, 3, 1)
            .unwrap()
            .and_hms_opt(8, 0, 0)
            .unwrap();
        let mut sample = Sample {
            orders: Vec::with_capacity(orders),
            events: Vec::new(),
        };
        for id in 1..=orders as u64 {
            let created = base + TimeDelta::seconds(id as i64 * 20 + faker.rng.gen_range(0..20));
            let mut order = faker.pending_order(id, created);
            let mut next_event = sample.events.len() as u64 + 1;
            let mut event = |faker: &mut Faker, order: &Order, kind: &'static str, at: NaiveDateTime| {
                let e = faker.event(next_event, order, kind, at);
                next_event += 1;
                e
            };
            let mut history = vec![event(&mut faker, &order, "created", order.updated_at)];
            let target = *[
                ("pending", 15),
                ("paid", 15),
                ("shipped", 20),
                ("completed", 35),
                ("cancelled", 10),
                ("refunded", 5),
            ]
            .choose_weighted(&mut faker.rng, |s| s.1)
            .unwrap();
            let mut at = order.updated_at;
            if target.0 == "cancelled" {
                at = faker.later(at, 600, 86_400);
                faker.advance(&mut order, "cancelled", at);
                history.push(event(&mut faker, &order, "cancelled", order.updated_at));
            } else if target.0 != "pending" {
                at = faker.later(at, 30, 7_200);
                faker.advance(&mut order, "paid", at);
                history.push(event(&mut faker, &order, "paid", order.updated_at));
                let ships =
                    matches!(target.0, "shipped" | "completed") || (target.0 == "refunded" && faker.rng.gen_bool(0.5));
                if ships {
                    at = faker.later(at, 3_600, 3 * 86_400);
                    faker.advance(&mut order, "shipped", at);
                    history.push(event(&mut faker, &order, "shipped", order.updated_at));
                }
                if matches!(target.0, "completed" | "refunded") {
                    at = faker.later(at, 86_400, 10 * 86_400);
                    faker.advance(&mut order, target.0, at);
                    history.push(event(&mut faker, &order, target.0, order.updated_at));
                }
            }
            if order.remark.is_some() && faker.rng.gen_bool(0.3) {
                history.push(event(&mut faker, &order, "remark_added", order.updated_at));
            }
            sample.orders.push(order);
            sample.events.extend(history);
        }
        sample
    }

    /// Multi-row INSERTs (at most `rows_per_statement` rows each) for `db`: orders first, then
    /// events.
    pub fn insert_statements(&self, db: &str, rows_per_statement: usize) -> Vec<String> {
        let n = rows_per_statement.max(1);
        let orders = self.orders.chunks(n).map(|c| order_insert(db, c));
        orders
            .chain(self.events.chunks(n).map(|c| event_insert(db, c)))
            .collect()
    }

    /// Inserts the sample into `db` (which must have the shop tables), 500 rows per statement.
    pub async fn load(&self, conn: &mut mysql_async::Conn, db: &str) -> Result<()> {
        for sql in self.insert_statements(db, 500) {
            conn.query_drop(&sql)
                .await
                .with_context(|| format!("loading sample into {db}"))?;
        }
        Ok(())
    }
}

/// Creates database `db` (utf8mb4) with the tables of [`SHOP_SCHEMA`], and makes it the
/// connection's current database.
pub async fn create_shop_schema(conn: &mut mysql_async::Conn, db: &str) -> Result<()> {
    let create = format!(
        "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
        ident(db)
    );
    conn.query_drop(create)
        .await
        .with_context(|| format!("creating database {db}"))?;
    conn.query_drop(format!("USE {}", ident(db))).await?;
    for statement in schema_tables() {
        conn.query_drop(statement)
            .await
            .with_context(|| format!("creating shop tables in {db}"))?;
    }
    Ok(())
}

/// Runs `statements` as one transaction (`BEGIN` … `COMMIT`, `ROLLBACK` on error).
pub async fn run_transaction(conn: &mut mysql_async::Conn, statements: &[String]) -> Result<()> {
    conn.query_drop("BEGIN").await?;
    for sql in statements {
        if let Err(e) = conn.query_drop(sql).await {
            let _ = conn.query_drop("ROLLBACK").await;
            return Err(e).with_context(|| format!("statement failed: {sql}"));
        }
    }
    conn.query_drop("COMMIT").await?;
    Ok(())
}

/// The table statements of [`SHOP_SCHEMA`], without its `CREATE DATABASE` and `USE`.
fn schema_tables() -> Vec<String> {
    let without_comments: String = SHOP_SCHEMA
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter(|s| {
            let upper = s.to_ascii_uppercase();
            !upper.starts_with("CREATE DATABASE") && !upper.starts_with("USE ")
        })
        .map(str::to_owned)
        .collect()
}

/// `INSERT INTO db.orders (…) VALUES (…), (…)`.
pub fn order_insert(db: &str, orders: &[Order]) -> String {
    let rows: Vec<String> = orders
        .iter()
        .map(|o| {
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
                o.id,
                quote(&o.order_no),
                quote(&o.buyer_name),
                quote(&o.buyer_phone),
                quote(&o.address),
                o.amount,
                quote(o.status),
                datetime(o.created_at, 0),
                opt_datetime(o.paid_at),
                opt_datetime(o.shipped_at),
                datetime(o.updated_at, 3),
                o.remark.as_deref().map_or_else(|| "NULL".to_owned(), quote),
                opt_json(o.items.as_ref()),
            )
        })
        .collect();
    format!(
        "INSERT INTO {}.orders ({ORDER_COLUMNS}) VALUES {}",
        ident(db),
        rows.join(", ")
    )
}

/// `INSERT INTO db.event_log (…) VALUES (…), (…)`.
pub fn event_insert(db: &str, events: &[Event]) -> String {
    let rows: Vec<String> = events
        .iter()
        .map(|e| {
            format!(
                "({}, {}, {}, {}, {}, {})",
                e.id,
                e.order_id,
                quote(e.event_type),
                quote(&e.payload.to_string()),
                e.operator_id.map_or_else(|| "NULL".to_owned(), |v| v.to_string()),
                datetime(e.occurred_at, 3),
            )
        })
        .collect();
    format!(
        "INSERT INTO {}.event_log ({EVENT_COLUMNS}) VALUES {}",
        ident(db),
        rows.join(", ")
    )
}

/// A single-quoted SQL string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\u{1a}' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A backquoted identifier.
pub fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `'YYYY-MM-DD HH:MM:SS[.fff]'` with `fsp` (0 or 3) fraction digits.
pub(crate) fn datetime(t: NaiveDateTime, fsp: u8) -> String {
    match fsp {
        0 => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S")),
        _ => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.3f")),
    }
}

fn opt_datetime(t: Option<NaiveDateTime>) -> String {
    t.map_or_else(|| "NULL".to_owned(), |t| datetime(t, 0))
}

pub(crate) fn opt_json(v: Option<&Value>) -> String {
    v.map_or_else(|| "NULL".to_owned(), |v| quote(&v.to_string()))
}

/// `cents` as an exact two-digit decimal string.
pub(crate) fn money(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

const COMMON_SURNAMES: &[&str] = &["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周"];
const OTHER_SURNAMES: &[&str] = &[
    "徐", "孙", "马", "朱", "胡", "郭", "何", "林", "高", "罗", "郑", "梁", "谢", "宋", "唐", "许", "韩", "冯", "邓",
    "曹", "彭", "曾", "萧", "田", "董", "袁", "潘", "蒋", "蔡", "余", "杜", "叶", "程", "苏", "魏", "吕", "丁", "沈",
];
const COMPOUND_SURNAMES: &[&str] = &["欧阳", "司马", "诸葛", "上官", "慕容"];
const GIVEN_NAMES: &[&str] = &[
    "伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "军", "洋", "勇", "艳", "杰", "涛", "明", "超", "霞", "平", "刚",
    "秀英", "秀兰", "桂英", "建国", "建华", "国强", "志强", "晓东", "海燕", "玉兰", "浩然", "子涵", "欣怡", "梓萱",
    "宇轩", "一诺", "思远", "雨桐", "晨曦", "佳怡", "俊杰",
];
/// Names outside the common patterns: ethnic names with a middle dot, a 4-byte CJK character.
const UNUSUAL_NAMES: &[&str] = &["买买提·艾力", "阿依古丽·买买提", "扎西·多吉", "王𠮷", "𠮷田"];
const PHONE_PREFIXES: &[&str] = &[
    "130", "131", "132", "133", "135", "136", "137", "138", "139", "150", "151", "152", "155", "156", "157", "158",
    "159", "166", "176", "177", "178", "180", "181", "182", "183", "185", "186", "187", "188", "189", "191", "198",
    "199",
];
/// Popular suffixes, so many different phones share their last four digits.
const COMMON_SUFFIXES: &[&str] = &["8888", "6666", "1234", "5678", "0000", "1314", "5200", "9527"];
/// (province, city, districts); municipalities have no province.
const REGIONS: &[(&str, &str, &[&str])] = &[
    ("浙江省", "杭州市", &["西湖区", "余杭区", "滨江区", "拱墅区", "上城区"]),
    ("浙江省", "宁波市", &["鄞州区", "海曙区"]),
    ("广东省", "深圳市", &["南山区", "福田区", "宝安区", "龙岗区"]),
    ("广东省", "广州市", &["天河区", "越秀区", "海珠区", "番禺区"]),
    ("江苏省", "南京市", &["鼓楼区", "玄武区", "建邺区"]),
    ("江苏省", "苏州市", &["姑苏区", "吴中区", "工业园区"]),
    ("四川省", "成都市", &["武侯区", "锦江区", "高新区"]),
    ("湖北省", "武汉市", &["洪山区", "江汉区", "武昌区"]),
    ("陕西省", "西安市", &["雁塔区", "碑林区"]),
    ("", "北京市", &["朝阳区", "海淀区", "东城区", "丰台区"]),
    ("", "上海市", &["浦东新区", "徐汇区", "静安区", "闵行区"]),
    ("", "天津市", &["和平区", "南开区"]),
    ("", "重庆市", &["渝中区", "江北区"]),
];
const ROADS: &[&str] = &[
    "文三路",
    "中山路",
    "人民路",
    "解放路",
    "建设路",
    "长江路",
    "南京东路",
    "建国路",
    "科技园南路",
    "天府大道",
    "学院路",
    "延安西路",
    "文一西路",
    "滨江大道",
    "和平街",
];
const COMPOUNDS: &[&str] = &["阳光花园", "金色家园", "翠苑", "华润城", "万科城", "世纪大厦", "星河湾"];
/// (title, price in cents).
const PRODUCTS: &[(&str, u64)] = &[
    ("Apple iPhone 15 Pro 256GB 原色钛金属", 899_900),
    ("华为 Mate 60 Pro 12GB+512GB 雅川青", 699_900),
    ("小米14 Ultra 16GB+1TB 黑色", 779_900),
    ("三只松鼠 每日坚果 750g/30袋", 12_990),
    ("蒙牛 特仑苏 纯牛奶 250ml×16盒", 6_590),
    ("李宁 超轻21 跑步鞋 男款 42码", 46_900),
    ("格力 1.5匹 变频冷暖空调 挂机", 279_900),
    ("美的 智能电饭煲 4L", 29_900),
    ("农夫山泉 饮用天然水 550ml×24瓶", 3_360),
    ("得力 A4 打印纸 70g 500张/包", 2_590),
    ("《三体》全集 刘慈欣 著", 9_840),
    ("良品铺子 高蛋白肉脯 200g", 3_990),
    ("戴森 V12 Detect Slim 无绳吸尘器", 459_000),
    ("索尼 WH-1000XM5 头戴式降噪耳机", 249_900),
    ("安踏 速干运动T恤 \"冰丝\"款", 8_900),
    ("飞鹤 星飞帆 婴儿配方奶粉 3段 700g", 25_800),
];
const REMARKS: &[&str] = &[
    "请尽快发货，谢谢！",
    "周末送货，工作日家里没人",
    "放门卫室/快递柜即可",
    "不要辣🌶️，多放香菜😂",
    "生日礼物🎁，请不要放价格单",
    "发票抬头：杭州某某科技有限公司，税号 91330100MA2XXXXX",
    "送之前打电话 {phone}，或者打我爱人 13800138000",
    "联系人换成 {name}，电话 {phone}",
    "It's a gift — handle with care, 'fragile'!",
    "路径备注：C:\\订单\\备注.txt",
    "第一行备注\n第二行备注\t含制表符",
    "",
];
const CARRIERS: &[(&str, &str)] = &[
    ("顺丰速运", "SF"),
    ("中通快递", "ZT"),
    ("圆通速递", "YT"),
    ("京东物流", "JD"),
];

/// The random source behind [`Sample`] and the workload generator.
#[derive(Debug)]
pub(crate) struct Faker {
    pub(crate) rng: StdRng,
    /// Returning customers, so names, phones and addresses repeat.
    customers: Vec<(String, String, String)>,
}

impl Faker {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            customers: Vec::new(),
        }
    }

    pub(crate) fn name(&mut self) -> String {
        let r = &mut self.rng;
        match r.gen_range(0..100) {
            0 => UNUSUAL_NAMES.choose(r).unwrap().to_string(),
            1..=3 => format!(
                "{}{}",
                COMPOUND_SURNAMES.choose(r).unwrap(),
                GIVEN_NAMES.choose(r).unwrap()
            ),
            n => {
                let surnames = if n < 65 { COMMON_SURNAMES } else { OTHER_SURNAMES };
                format!("{}{}", surnames.choose(r).unwrap(), GIVEN_NAMES.choose(r).unwrap())
            }
        }
    }

    pub(crate) fn phone(&mut self) -> String {
        let r = &mut self.rng;
        let prefix = PHONE_PREFIXES.choose(r).unwrap();
        let middle = r.gen_range(0..10_000);
        let suffix = if r.gen_bool(0.4) {
            COMMON_SUFFIXES.choose(r).unwrap().to_string()
        } else {
            format!("{:04}", r.gen_range(0..10_000))
        };
        format!("{prefix}{middle:04}{suffix}")
    }

    pub(crate) fn address(&mut self) -> String {
        let r = &mut self.rng;
        let (province, city, districts) = REGIONS.choose(r).unwrap();
        let district = districts.choose(r).unwrap();
        let road = ROADS.choose(r).unwrap();
        let number = r.gen_range(1..1_000);
        let mut address = format!("{province}{city}{district}{road}{number}号");
        if r.gen_bool(0.6) {
            let compound = COMPOUNDS.choose(r).unwrap();
            let building = r.gen_range(1..30);
            let unit = r.gen_range(1..6);
            let room = r.gen_range(1..33) * 100 + r.gen_range(1..5);
            address.push_str(&format!("{compound}{building}栋{unit}单元{room}室"));
        }
        address
    }

    /// A new or (one time in four) returning customer: name, phone, address.
    fn customer(&mut self) -> (String, String, String) {
        if !self.customers.is_empty() && self.rng.gen_bool(0.25) {
            return self.customers.choose(&mut self.rng).unwrap().clone();
        }
        let customer = (self.name(), self.phone(), self.address());
        if self.customers.len() < 500 {
            self.customers.push(customer.clone());
        }
        customer
    }

    pub(crate) fn remark(&mut self, name: &str, phone: &str) -> Option<String> {
        if self.rng.gen_bool(0.5) {
            return None;
        }
        let template = REMARKS.choose(&mut self.rng).unwrap();
        Some(template.replace("{phone}", phone).replace("{name}", name))
    }

    /// 1–4 products (or, rarely, no item list at all) and the total in cents.
    pub(crate) fn items(&mut self) -> (Option<Value>, u64) {
        if self.rng.gen_bool(0.05) {
            return (None, self.rng.gen_range(0..5_000_000));
        }
        let count = self.rng.gen_range(1..=4);
        let mut total = 0;
        let items: Vec<Value> = PRODUCTS
            .choose_multiple(&mut self.rng, count)
            .map(|(title, price)| {
                let qty = self.rng.gen_range(1..=3u64);
                total += price * qty;
                json!({ "title": title, "qty": qty, "price": money(*price), "sku": format!("SKU-{:06}", price % 999_983) })
            })
            .collect();
        let discount = if self.rng.gen_bool(0.2) {
            total.min(self.rng.gen_range(1..=2_000))
        } else {
            0
        };
        (Some(Value::Array(items)), total - discount)
    }

    /// A fresh `pending` order created at `created_at`.
    pub(crate) fn pending_order(&mut self, id: u64, created_at: NaiveDateTime) -> Order {
        let (buyer_name, buyer_phone, address) = self.customer();
        let (items, cents) = self.items();
        let remark = self.remark(&buyer_name, &buyer_phone);
        let created_at = created_at.with_nanosecond(0).unwrap();
        Order {
            id,
            order_no: format!("SO{}{id:08}", created_at.format("%Y%m%d")),
            buyer_name,
            buyer_phone,
            address,
            amount: money(cents),
            status: "pending",
            created_at,
            paid_at: None,
            shipped_at: None,
            updated_at: created_at + TimeDelta::milliseconds(self.rng.gen_range(0..1_000)),
            remark,
            items,
        }
    }

    /// `at` plus between `min_secs` and `max_secs` seconds, whole seconds.
    pub(crate) fn later(&mut self, at: NaiveDateTime, min_secs: i64, max_secs: i64) -> NaiveDateTime {
        at.with_nanosecond(0).unwrap() + TimeDelta::seconds(self.rng.gen_range(min_secs..=max_secs))
    }

    /// Moves `order` to `status` at `at`, setting the matching timestamp column.
    pub(crate) fn advance(&mut self, order: &mut Order, status: &'static str, at: NaiveDateTime) {
        let second = at.with_nanosecond(0).unwrap();
        match status {
            "paid" => order.paid_at = Some(second),
            "shipped" => order.shipped_at = Some(second),
            _ => {}
        }
        order.status = status;
        order.updated_at = second + TimeDelta::milliseconds(self.rng.gen_range(0..1_000));
    }

    /// The `event_log` row recording `kind` for `order` at `at`.
    pub(crate) fn event(&mut self, id: u64, order: &Order, kind: &'static str, at: NaiveDateTime) -> Event {
        let r = &mut self.rng;
        let staff = r.gen_range(1001..1021);
        let (payload, operator_id) = match kind {
            "created" => (
                json!({
                    "channel": pick(r, &["app", "web", "mini_program"]),
                    "amount": order.amount,
                    "items": order.items.as_ref().and_then(Value::as_array).map_or(0, Vec::len),
                }),
                None,
            ),
            "paid" => (
                json!({
                    "method": pick(r, &["alipay", "wechat_pay", "unionpay"]),
                    "trade_no": format!("{}{:010}", at.format("%Y%m%d"), r.gen_range(0..10_000_000_000u64)),
                    "amount": order.amount,
                }),
                None,
            ),
            "shipped" => {
                let (carrier, code) = CARRIERS.choose(r).unwrap();
                (
                    json!({
                        "carrier": carrier,
                        "tracking_no": format!("{code}{:012}", r.gen_range(0..1_000_000_000_000u64)),
                        "packages": r.gen_range(1..3),
                        "warehouse": { "code": "HZ01", "name": "杭州一号仓" },
                    }),
                    Some(staff),
                )
            }
            "completed" => (
                json!({ "rating": r.gen_range(1..=5), "comment": pick(r, &["好评！", "物流很快👍", "还行", "包装破损了"]) }),
                None,
            ),
            "cancelled" => (
                json!({ "reason": pick(r, &["买家取消：不想要了", "超时未支付", "地址填错了"]), "by": "buyer" }),
                r.gen_bool(0.5).then_some(staff),
            ),
            "refunded" => (
                json!({ "amount": order.amount, "reason": "商品质量问题", "approved": true }),
                Some(staff),
            ),
            "remark_added" => (json!({ "remark": order.remark }), None),
            "address_changed" => (json!({ "address": order.address }), r.gen_bool(0.3).then_some(staff)),
            "price_adjusted" => (json!({ "amount": order.amount, "reason": "客服改价" }), Some(staff)),
            _ => (
                json!({ "note": "客服备注：已电话联系买家", "tags": ["回访", "VIP"] }),
                Some(staff),
            ),
        };
        // DATETIME(3) keeps milliseconds only.
        let occurred_at = at
            .with_nanosecond(at.nanosecond() / 1_000_000 * 1_000_000)
            .unwrap_or(at);
        Event {
            id,
            order_id: order.id,
            event_type: kind,
            payload,
            operator_id,
            occurred_at,
        }
    }
}

fn pick(rng: &mut StdRng, options: &[&'static str]) -> &'static str {
    options.choose(rng).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn same_seed_same_sql_different_seed_different_sql() {
        let a = Sample::generate(7, 50).insert_statements("shop", 20);
        let b = Sample::generate(7, 50).insert_statements("shop", 20);
        let c = Sample::generate(8, 50).insert_statements("shop", 20);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a.iter().filter(|s| s.starts_with("INSERT INTO `shop`.orders")).count(),
            3
        );
    }

    #[test]
    fn sample_rows_are_realistic_and_collide() {
        let sample = Sample::generate(42, 500);
        let phone = regex::Regex::new(r"^1[3-9]\d{9}$").unwrap();
        let amount = regex::Regex::new(r"^\d+\.\d{2}$").unwrap();
        for o in &sample.orders {
            assert!(phone.is_match(&o.buyer_phone), "{}", o.buyer_phone);
            assert!(amount.is_match(&o.amount), "{}", o.amount);
            assert!(o.address.contains('市') && o.address.contains('号'), "{}", o.address);
            // Timestamps agree with the status.
            assert_eq!(
                o.paid_at.is_some(),
                matches!(o.status, "paid" | "shipped" | "completed" | "refunded"),
                "{o:?}"
            );
            if matches!(o.status, "shipped" | "completed") {
                assert!(o.shipped_at.is_some(), "{o:?}");
            }
            if o.shipped_at.is_some() {
                assert!(matches!(o.status, "shipped" | "completed" | "refunded"), "{o:?}");
            }
            assert!(o.paid_at.is_none_or(|p| p >= o.created_at) && o.shipped_at.is_none_or(|s| Some(s) >= o.paid_at));
            assert!(o.updated_at >= o.created_at);
        }
        let names: HashSet<_> = sample.orders.iter().map(|o| &o.buyer_name).collect();
        let suffixes: HashSet<_> = sample.orders.iter().map(|o| &o.buyer_phone[7..]).collect();
        assert!(names.len() < 400, "names should collide, {} distinct", names.len());
        assert!(
            suffixes.len() < 450,
            "phone suffixes should collide, {} distinct",
            suffixes.len()
        );
        let statuses: HashSet<_> = sample.orders.iter().map(|o| o.status).collect();
        assert_eq!(statuses.len(), ORDER_STATUSES.len());
        assert!(sample.orders.iter().any(|o| o.remark.as_deref() == Some("")));
        assert!(sample
            .orders
            .iter()
            .any(|o| o.remark.as_deref().is_some_and(|r| r.contains('\\'))));
        // Events: ids 1..=n, each for an existing order, in time order per order.
        for (i, e) in sample.events.iter().enumerate() {
            assert_eq!(e.id, i as u64 + 1);
            assert!(e.order_id >= 1 && e.order_id <= 500);
        }
        assert!(sample.events.len() > 1_000);
    }

    #[test]
    fn quote_escapes_everything_mysql_would_misread() {
        assert_eq!(quote("it's"), r"'it\'s'");
        assert_eq!(quote(r"C:\x"), r"'C:\\x'");
        assert_eq!(quote("a\nb\r\0\u{1a}"), r"'a\nb\r\0\Z'");
        assert_eq!(quote("王𠮷🎁"), "'王𠮷🎁'");
        assert_eq!(ident("we`ird"), "`we``ird`");
    }

    #[test]
    fn schema_statements_are_the_two_tables() {
        let tables = schema_tables();
        assert_eq!(tables.len(), 2, "{tables:?}");
        assert!(tables[0].starts_with("CREATE TABLE IF NOT EXISTS orders"));
        assert!(tables[1].starts_with("CREATE TABLE IF NOT EXISTS event_log"));
    }
}
