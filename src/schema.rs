//! Table schemas as described by the binlog's TABLE_MAP events.
//!
//! Contract: a [`TableSchema`] describes the table exactly as it was when the rows event that
//! follows its TABLE_MAP was written, because it is built from that TABLE_MAP (with
//! `binlog_row_metadata=FULL` it carries column names, signedness, charsets, ENUM/SET members and
//! the primary key). This is why an `ALTER TABLE` mid-stream cannot mis-map columns: rows are
//! never decoded against a schema read from the live server at a different time.

/// A table's layout at one point of the binlog.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    pub database: String,
    pub table: String,
    pub columns: Vec<ColumnSchema>,
    /// Positions (into `columns`) of the primary key columns, in key order; empty when the
    /// server sent no primary key metadata.
    pub primary_key: Vec<usize>,
}

impl TableSchema {
    /// `database.table`, the name mappings match against.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// Position of the column called `name`.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// One column's decode metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSchema {
    /// Column name; `@N` (1-based) when the binlog carries no names.
    pub name: String,
    /// Binlog column type byte (`MYSQL_TYPE_*`), with ENUM/SET resolved from the STRING real type.
    pub column_type: u8,
    /// Type metadata bytes from the TABLE_MAP.
    pub meta: Vec<u8>,
    pub unsigned: bool,
    pub nullable: bool,
    /// Collation id for character, ENUM and SET columns.
    pub charset: Option<u16>,
    /// ENUM or SET member names.
    pub members: Vec<String>,
}
