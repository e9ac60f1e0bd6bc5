//! cdc-indexer: keeps Elasticsearch indexes in step with MySQL/MariaDB tables by streaming the
//! binary log. Data flows one way: `source → transform → sink → checkpoint`.

pub mod binlog_watch;
pub mod bulk;
pub mod change;
pub mod checker;
pub mod checkpoint;
pub mod config;
pub mod congestion;
pub mod dead_letter;
pub mod decode;
pub mod health;
pub mod heartbeat;
pub mod indexes;
pub mod mask;
pub mod metrics;
pub mod pipeline;
pub mod position;
pub mod reindex;
pub mod retry;
pub mod schema;
pub mod search;
pub mod secret;
pub mod sink;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod testkit;
pub mod tls;
pub mod tokenize;
pub mod transform;
pub mod transform_pool;
pub mod value;
