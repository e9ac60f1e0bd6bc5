//! cdc-indexer: keeps Elasticsearch indexes in step with MySQL/MariaDB tables by streaming the
//! binary log. Data flows one way: `source → transform → sink → checkpoint`.

pub mod change;
pub mod position;
pub mod schema;
pub mod value;
