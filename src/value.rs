//! Decoded column values, exactly as the server stored them.
//!
//! Contract: a [`Value`] never loses information relative to the binlog bytes. DECIMAL stays a
//! decimal string (never an `f64`), DATETIME keeps its fractional precision and carries no zone
//! (the transform applies the configured source zone), TIMESTAMP is an instant (seconds since the
//! epoch), and text is kept as bytes plus charset until the transform renders it, so latin1 and
//! binary columns survive intact.

/// One column value of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// The column is not part of this row image (partial images, e.g. `binlog_row_image=NOBLOB`).
    /// A document update must leave such a field as it was.
    Absent,
    /// Signed integer of any width (TINYINT … BIGINT, sign-extended).
    Int(i64),
    /// Unsigned integer of any width.
    UInt(u64),
    Float(f32),
    Double(f64),
    /// DECIMAL as its exact canonical string, e.g. `-12.30` (scale digits kept).
    Decimal(String),
    /// DATE; zero dates are kept as zeros.
    Date {
        year: u16,
        month: u8,
        day: u8,
    },
    /// DATETIME(fsp): wall-clock time in the source time zone. `micros` holds the fraction.
    DateTime {
        year: u16,
        month: u8,
        day: u8,
        hour: u8,
        minute: u8,
        second: u8,
        micros: u32,
        fsp: u8,
    },
    /// TIME(fsp): a signed duration that may exceed 24 hours (range ±838:59:59).
    Time {
        negative: bool,
        hours: u32,
        minutes: u8,
        seconds: u8,
        micros: u32,
        fsp: u8,
    },
    /// TIMESTAMP(fsp): an instant, seconds and microseconds since the Unix epoch (UTC).
    Timestamp {
        seconds: i64,
        micros: u32,
        fsp: u8,
    },
    /// YEAR; 0 means the zero year `0000`.
    Year(u16),
    /// Character data with its collation id (e.g. 45/46/224/255 utf8mb4, 8 latin1, 63 binary).
    Text {
        bytes: Vec<u8>,
        charset: u16,
    },
    /// BINARY / VARBINARY / BLOB / GEOMETRY / VECTOR payloads.
    Bytes(Vec<u8>),
    /// ENUM by name (`""` for the invalid index 0).
    Enum(String),
    /// SET by member names, in definition order.
    Set(Vec<String>),
    /// BIT(n), big-endian bytes as stored.
    Bit(Vec<u8>),
    /// JSON (MySQL binary JSON decoded; MariaDB's LONGTEXT JSON parsed by the transform).
    Json(serde_json::Value),
}

/// Appends `n` in decimal, zero-padded to at least `width` digits: what `{n:0width$}` prints,
/// without `fmt` (dates and DECIMALs are rendered this way for every row on the hot path).
pub(crate) fn push_padded(out: &mut String, mut n: u32, width: usize) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push('0');
    }
    out.extend(digits[..len].iter().rev().map(|&d| char::from(d)));
}
