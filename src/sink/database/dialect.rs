//! What differs between the databases the sink writes to: quoting, column types, the upsert
//! statement, limits.
//!
//! # Background
//! The three databases agree on plain `INSERT` and on transactions, and differ on the rest:
//! identifiers are quoted with double quotes (PostgreSQL, SQLite) or backticks (MySQL), a key
//! column holding text must be a `VARCHAR` in MySQL (an index on `TEXT` needs a prefix length),
//! the upsert is `ON CONFLICT ... DO UPDATE` or `ON DUPLICATE KEY UPDATE`, and a statement may
//! carry 32766 (SQLite) or 65535 (PostgreSQL, MySQL) bind parameters. Everything that depends on
//! the database is here, as plain functions of a [`Dialect`] that build SQL text, so it can be
//! tested without a server.

use datafusion::arrow::datatypes::DataType;

/// The database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// SQLite (`sqlite://path`), bundled; a missing file is created.
    Sqlite,
    /// PostgreSQL (`postgres://` or `postgresql://`).
    Postgres,
    /// MySQL or MariaDB (`mysql://` or `mariadb://`).
    MySql,
}

/// What a sink column holds, from its Arrow type: it picks the SQL type of a created column,
/// which existing columns can take it, and how values are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `Boolean`.
    Bool,
    /// A signed or unsigned integer of `bits` bits.
    Int {
        /// 8, 16, 32 or 64.
        bits: u8,
        /// Whether negative values exist.
        signed: bool,
    },
    /// `Float16` and `Float32`.
    Float32,
    /// `Float64`.
    Float64,
    /// `Decimal128` and `Decimal256`, written exactly (as decimal text).
    Decimal {
        /// Total digits (at least 1).
        precision: u8,
        /// Digits after the point (0 for a negative Arrow scale, folded into the precision).
        scale: u8,
    },
    /// `Utf8`, `LargeUtf8`, `Utf8View`.
    Text,
    /// `Binary`, `LargeBinary`, `BinaryView`, `FixedSizeBinary`.
    Binary,
    /// `Date32`, `Date64`.
    Date,
    /// `Timestamp`, kept to microseconds; `utc` when it has a time zone (written in UTC).
    Timestamp {
        /// The Arrow type has a time zone.
        utc: bool,
    },
    /// `Null`: a column that is always null.
    Null,
    /// Any other type (times, durations, intervals, lists, maps): written as Arrow's display text.
    Formatted,
}

impl Kind {
    /// The kind of an Arrow column (after struct columns are flattened and dictionaries decoded).
    pub(crate) fn of(data_type: &DataType) -> Kind {
        match data_type {
            DataType::Boolean => Kind::Bool,
            DataType::Int8 => Kind::Int { bits: 8, signed: true },
            DataType::Int16 => Kind::Int { bits: 16, signed: true },
            DataType::Int32 => Kind::Int { bits: 32, signed: true },
            DataType::Int64 => Kind::Int { bits: 64, signed: true },
            DataType::UInt8 => Kind::Int { bits: 8, signed: false },
            DataType::UInt16 => Kind::Int {
                bits: 16,
                signed: false,
            },
            DataType::UInt32 => Kind::Int {
                bits: 32,
                signed: false,
            },
            DataType::UInt64 => Kind::Int {
                bits: 64,
                signed: false,
            },
            DataType::Float16 | DataType::Float32 => Kind::Float32,
            DataType::Float64 => Kind::Float64,
            DataType::Decimal32(p, s)
            | DataType::Decimal64(p, s)
            | DataType::Decimal128(p, s)
            | DataType::Decimal256(p, s) => {
                let (precision, scale) = if *s < 0 {
                    (p.saturating_add(s.unsigned_abs()), 0)
                } else {
                    (*p, *s as u8)
                };
                Kind::Decimal {
                    precision: precision.max(1),
                    scale,
                }
            }
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Kind::Text,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
                Kind::Binary
            }
            DataType::Date32 | DataType::Date64 => Kind::Date,
            DataType::Timestamp(_, tz) => Kind::Timestamp { utc: tz.is_some() },
            DataType::Dictionary(_, values) => Kind::of(values),
            DataType::Null => Kind::Null,
            _ => Kind::Formatted,
        }
    }
}

/// What an existing column's declared type can hold, coarsely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Bool,
    Integer,
    Float,
    Decimal,
    Text,
    Binary,
    Date,
    Timestamp,
    /// SQLite's NUMERIC affinity: integers, reals, and text that does not look like a number.
    Numeric,
    /// SQLite's BLOB affinity (no declared type): anything, stored as given.
    Any,
    Other,
}

/// The SQLite's largest number of bind parameters in one statement (SQLITE_MAX_VARIABLE_NUMBER
/// since 3.32; the bundled library is newer).
const SQLITE_MAX_PARAMS: usize = 32_766;
/// PostgreSQL's and MySQL's largest number of bind parameters in one statement (a u16 count in
/// their protocols).
const WIRE_MAX_PARAMS: usize = 65_535;

impl Dialect {
    /// The dialect of a connection URL, from its scheme.
    pub(crate) fn of_url(url: &str) -> Option<Dialect> {
        let scheme = url.split_once(':')?.0.to_ascii_lowercase();
        match scheme.as_str() {
            "sqlite" => Some(Dialect::Sqlite),
            "postgres" | "postgresql" => Some(Dialect::Postgres),
            "mysql" | "mariadb" => Some(Dialect::MySql),
            _ => None,
        }
    }

    /// The database's name, for messages.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "SQLite",
            Dialect::Postgres => "PostgreSQL",
            Dialect::MySql => "MySQL",
        }
    }

    /// `ident` as a quoted identifier: any name, reserved words and quotes included, stays one
    /// identifier (the quote character inside is doubled): `a "b"` becomes `"a ""b"""` in
    /// PostgreSQL and SQLite, ``a`b`` becomes ``` `a``b` ``` in MySQL.
    pub(crate) fn quote(self, ident: &str) -> String {
        let q = match self {
            Dialect::MySql => '`',
            Dialect::Sqlite | Dialect::Postgres => '"',
        };
        let mut out = String::with_capacity(ident.len() + 2);
        out.push(q);
        for c in ident.chars() {
            if c == q {
                out.push(q);
            }
            out.push(c);
        }
        out.push(q);
        out
    }

    /// The most bind parameters one statement may carry.
    pub(crate) fn max_params(self) -> usize {
        match self {
            Dialect::Sqlite => SQLITE_MAX_PARAMS,
            Dialect::Postgres | Dialect::MySql => WIRE_MAX_PARAMS,
        }
    }

    /// Why `ident` cannot name a table or column here, if it cannot. PostgreSQL would silently
    /// cut a name longer than 63 bytes (so later statements miss the column); MySQL refuses
    /// names longer than 64 characters or ending in a space.
    pub(crate) fn check_identifier(self, ident: &str) -> Result<(), String> {
        if ident.is_empty() {
            return Err("an empty name".into());
        }
        if ident.contains('\0') {
            return Err("a name with a NUL character".into());
        }
        match self {
            Dialect::Postgres if ident.len() > 63 => Err(format!(
                "PostgreSQL names are at most 63 bytes, this one has {}",
                ident.len()
            )),
            Dialect::MySql if ident.chars().count() > 64 => Err(format!(
                "MySQL names are at most 64 characters, this one has {}",
                ident.chars().count()
            )),
            Dialect::MySql if ident.ends_with(' ') => Err("MySQL names cannot end with a space".into()),
            _ => Ok(()),
        }
    }

    /// The column type a created table gets for `kind` (`key`: part of the primary key).
    pub(crate) fn sql_type(self, kind: Kind, key: bool) -> String {
        use Dialect::*;
        let name = match (self, kind) {
            (Sqlite, Kind::Bool) => "BOOLEAN",
            (Sqlite, Kind::Int { .. }) => "INTEGER",
            (Sqlite, Kind::Float32 | Kind::Float64) => "REAL",
            (Sqlite, Kind::Binary) => "BLOB",
            (
                Sqlite,
                Kind::Text | Kind::Decimal { .. } | Kind::Date | Kind::Timestamp { .. } | Kind::Null | Kind::Formatted,
            ) => "TEXT",

            (Postgres, Kind::Bool) => "BOOLEAN",
            (
                Postgres,
                Kind::Int {
                    bits: 8 | 16,
                    signed: true,
                }
                | Kind::Int { bits: 8, signed: false },
            ) => "SMALLINT",
            (
                Postgres,
                Kind::Int { bits: 32, signed: true }
                | Kind::Int {
                    bits: 16,
                    signed: false,
                },
            ) => "INTEGER",
            (
                Postgres,
                Kind::Int {
                    bits: 64,
                    signed: false,
                },
            ) => "NUMERIC(20, 0)",
            (Postgres, Kind::Int { .. }) => "BIGINT",
            (Postgres, Kind::Float32) => "REAL",
            (Postgres, Kind::Float64) => "DOUBLE PRECISION",
            (Postgres, Kind::Decimal { precision, scale }) => return format!("NUMERIC({precision}, {scale})"),
            (Postgres, Kind::Binary) => "BYTEA",
            (Postgres, Kind::Date) => "DATE",
            (Postgres, Kind::Timestamp { utc: false }) => "TIMESTAMP",
            (Postgres, Kind::Timestamp { utc: true }) => "TIMESTAMPTZ",
            (Postgres, Kind::Text | Kind::Null | Kind::Formatted) => "TEXT",

            (MySql, Kind::Bool) => "BOOLEAN",
            (MySql, Kind::Int { bits, signed }) => {
                let base = match bits {
                    8 => "TINYINT",
                    16 => "SMALLINT",
                    32 => "INT",
                    _ => "BIGINT",
                };
                return if signed {
                    base.to_string()
                } else {
                    format!("{base} UNSIGNED")
                };
            }
            (MySql, Kind::Float32) => "FLOAT",
            (MySql, Kind::Float64) => "DOUBLE",
            (MySql, Kind::Decimal { precision, scale }) => return format!("DECIMAL({precision}, {scale})"),
            (MySql, Kind::Binary) if key => "VARBINARY(255)",
            (MySql, Kind::Binary) => "LONGBLOB",
            (MySql, Kind::Date) => "DATE",
            (MySql, Kind::Timestamp { .. }) => "DATETIME(6)",
            (MySql, Kind::Text | Kind::Null | Kind::Formatted) if key => "VARCHAR(255)",
            (MySql, Kind::Text | Kind::Null | Kind::Formatted) => "LONGTEXT",
        };
        name.to_string()
    }

    /// Why `kind` cannot be a column of a created table here, if it cannot.
    pub(crate) fn check_kind(self, kind: Kind) -> Result<(), String> {
        match (self, kind) {
            (Dialect::MySql, Kind::Decimal { precision, scale }) if precision > 65 || scale > 30 => Err(format!(
                "MySQL decimals have at most 65 digits, 30 after the point; this one is DECIMAL({precision}, {scale}): \
                 cast it to a smaller decimal or to DOUBLE"
            )),
            _ => Ok(()),
        }
    }

    /// Whether an existing column declared as `declared` (as the database reports it) can take
    /// the values of `kind` without losing what they mean.
    pub(crate) fn accepts(self, declared: &str, kind: Kind) -> bool {
        use Family::*;
        let family = self.family(declared);
        if family == Any || kind == Kind::Null {
            return true;
        }
        let sqlite = self == Dialect::Sqlite;
        match kind {
            Kind::Bool => matches!(family, Bool | Integer | Numeric),
            Kind::Int { .. } => matches!(family, Integer | Decimal | Float | Numeric),
            Kind::Float32 | Kind::Float64 => matches!(family, Float | Decimal | Numeric),
            Kind::Decimal { .. } => matches!(family, Decimal | Float | Numeric) || (sqlite && family == Text),
            Kind::Text | Kind::Formatted => family == Text,
            Kind::Binary => family == Binary,
            Kind::Date => matches!(family, Date | Timestamp) || (sqlite && matches!(family, Text | Numeric)),
            Kind::Timestamp { .. } => family == Timestamp || (sqlite && matches!(family, Text | Numeric)),
            Kind::Null => true,
        }
    }

    fn family(self, declared: &str) -> Family {
        use Family::*;
        let t = declared.trim().to_ascii_lowercase();
        match self {
            // SQLite's column affinity rules (https://sqlite.org/datatype3.html, 3.1), in order.
            Dialect::Sqlite => {
                if t.contains("int") {
                    Integer
                } else if t.contains("char") || t.contains("clob") || t.contains("text") {
                    Text
                } else if t.is_empty() || t.contains("blob") {
                    Any
                } else if t.contains("real") || t.contains("floa") || t.contains("doub") {
                    Float
                } else {
                    Numeric
                }
            }
            Dialect::Postgres => match t.as_str() {
                "boolean" => Bool,
                "smallint" | "integer" | "bigint" => Integer,
                "real" | "double precision" => Float,
                "numeric" => Decimal,
                "text" | "character varying" | "character" | "name" => Text,
                "bytea" => Binary,
                "date" => Date,
                "timestamp without time zone" | "timestamp with time zone" => Timestamp,
                _ => Other,
            },
            Dialect::MySql => match t.as_str() {
                "tinyint" | "smallint" | "mediumint" | "int" | "integer" | "bigint" => Integer,
                "bool" | "boolean" | "bit" => Bool,
                "float" | "double" | "real" => Float,
                "decimal" | "numeric" => Decimal,
                "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" => Text,
                "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => Binary,
                "date" => Date,
                "datetime" | "timestamp" => Timestamp,
                _ => Other,
            },
        }
    }

    /// `CREATE TABLE IF NOT EXISTS` for the sink's table; `key` (if any) becomes its primary key
    /// and its columns `NOT NULL`.
    pub(crate) fn create_table(self, table: &str, columns: &[(String, Kind)], key: Option<&[String]>) -> String {
        let key = key.unwrap_or_default();
        let mut parts: Vec<String> = columns
            .iter()
            .map(|(name, kind)| {
                let is_key = key.contains(name);
                let not_null = if is_key { " NOT NULL" } else { "" };
                format!("{} {}{not_null}", self.quote(name), self.sql_type(*kind, is_key))
            })
            .collect();
        if !key.is_empty() {
            parts.push(format!("PRIMARY KEY ({})", self.quote_list(key)));
        }
        let options = match self {
            // InnoDB for transactions; binary collation so that keys differing only in case or
            // accents stay different rows, as they are in Arrow.
            Dialect::MySql => " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            Dialect::Sqlite | Dialect::Postgres => "",
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({}){options}",
            self.quote(table),
            parts.join(", ")
        )
    }

    /// `CREATE TABLE IF NOT EXISTS` for the commits table: one row per query and committed batch.
    pub(crate) fn create_commits_table(self) -> String {
        let (id, batch, options) = match self {
            Dialect::Sqlite => ("TEXT", "INTEGER", ""),
            Dialect::Postgres => ("TEXT", "BIGINT", ""),
            Dialect::MySql => (
                "VARCHAR(255)",
                "BIGINT",
                " ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            ),
        };
        format!(
            "CREATE TABLE IF NOT EXISTS {} ({} {id} NOT NULL, {} {batch} NOT NULL, PRIMARY KEY ({}, {})){options}",
            self.quote(COMMITS_TABLE),
            self.quote("query_id"),
            self.quote("batch_id"),
            self.quote("query_id"),
            self.quote("batch_id"),
        )
    }

    /// The `n`-th (1-based) bind parameter.
    pub(crate) fn param(self, n: usize) -> String {
        match self {
            Dialect::Postgres => format!("${n}"),
            Dialect::Sqlite | Dialect::MySql => "?".to_string(),
        }
    }

    /// The statements that read and move a query's commit mark: the last batch id recorded,
    /// record one (parameters: query id, batch id), and forget the older ones (same parameters).
    pub(crate) fn commit_statements(self) -> CommitStatements {
        let table = self.quote(COMMITS_TABLE);
        let (q, b) = (self.quote("query_id"), self.quote("batch_id"));
        let (p1, p2) = (self.param(1), self.param(2));
        CommitStatements {
            last: format!("SELECT MAX({b}) FROM {table} WHERE {q} = {p1}"),
            record: format!("INSERT INTO {table} ({q}, {b}) VALUES ({p1}, {p2})"),
            prune: format!("DELETE FROM {table} WHERE {q} = {p1} AND {b} < {p2}"),
        }
    }

    /// The upsert clause after an `INSERT` of `columns`, replacing the non-key columns of a row
    /// whose `key` exists already.
    pub(crate) fn upsert_clause(self, columns: &[String], key: &[String]) -> String {
        let others: Vec<&String> = columns.iter().filter(|c| !key.contains(c)).collect();
        match self {
            Dialect::Postgres | Dialect::Sqlite => {
                let target = self.quote_list(key);
                if others.is_empty() {
                    return format!(" ON CONFLICT ({target}) DO NOTHING");
                }
                let sets: Vec<String> = others
                    .iter()
                    .map(|c| format!("{0} = excluded.{0}", self.quote(c)))
                    .collect();
                format!(" ON CONFLICT ({target}) DO UPDATE SET {}", sets.join(", "))
            }
            Dialect::MySql => {
                // VALUES(col) is what MariaDB understands (MySQL 8 still accepts it).
                let sets: Vec<String> = match others.is_empty() {
                    true => vec![format!("{0} = {0}", self.quote(&key[0]))],
                    false => others
                        .iter()
                        .map(|c| format!("{0} = VALUES({0})", self.quote(c)))
                        .collect(),
                };
                format!(" ON DUPLICATE KEY UPDATE {}", sets.join(", "))
            }
        }
    }

    /// The PostgreSQL type of the array a column's values are bound as.
    pub(crate) fn pg_array_type(kind: Kind) -> &'static str {
        match kind {
            Kind::Bool => "BOOLEAN[]",
            Kind::Int {
                bits: 64,
                signed: false,
            } => "TEXT[]",
            Kind::Int { .. } => "BIGINT[]",
            Kind::Float32 => "REAL[]",
            Kind::Float64 => "DOUBLE PRECISION[]",
            Kind::Binary => "BYTEA[]",
            Kind::Date => "DATE[]",
            Kind::Timestamp { utc: false } => "TIMESTAMP[]",
            Kind::Timestamp { utc: true } => "TIMESTAMPTZ[]",
            Kind::Text | Kind::Decimal { .. } | Kind::Null | Kind::Formatted => "TEXT[]",
        }
    }

    fn quote_list(self, names: &[String]) -> String {
        names.iter().map(|n| self.quote(n)).collect::<Vec<_>>().join(", ")
    }
}

/// The table where the sink records, in the same transaction as the data, the last batch each
/// query committed.
pub(crate) const COMMITS_TABLE: &str = "tidewater_commits";

/// SQL for the commits table; see [`Dialect::commit_statements`].
#[derive(Debug, Clone)]
pub(crate) struct CommitStatements {
    /// `SELECT MAX(batch_id) ... WHERE query_id = ?`.
    pub(crate) last: String,
    /// `INSERT (query_id, batch_id)`.
    pub(crate) record: String,
    /// `DELETE ... WHERE query_id = ? AND batch_id < ?`.
    pub(crate) prune: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_the_quote_character() {
        assert_eq!(Dialect::Postgres.quote(r#"a "b""#), r#""a ""b""""#);
        assert_eq!(
            Dialect::Sqlite.quote(r#""; DROP TABLE x; --"#),
            r#""""; DROP TABLE x; --""#
        );
        assert_eq!(Dialect::MySql.quote("a`b"), "`a``b`");
        assert_eq!(Dialect::MySql.quote(r#"a"b"#), r#"`a"b`"#);
    }

    #[test]
    fn upserts_per_dialect() {
        let columns = vec!["k".to_string(), "n".to_string()];
        let key = vec!["k".to_string()];
        assert_eq!(
            Dialect::Postgres.upsert_clause(&columns, &key),
            r#" ON CONFLICT ("k") DO UPDATE SET "n" = excluded."n""#
        );
        assert_eq!(
            Dialect::MySql.upsert_clause(&columns, &key),
            " ON DUPLICATE KEY UPDATE `n` = VALUES(`n`)"
        );
        assert_eq!(
            Dialect::Sqlite.upsert_clause(&key, &key),
            r#" ON CONFLICT ("k") DO NOTHING"#
        );
    }

    #[test]
    fn existing_columns_are_judged_by_family() {
        let int = Kind::Int { bits: 64, signed: true };
        assert!(Dialect::Postgres.accepts("integer", int));
        assert!(!Dialect::Postgres.accepts("text", int));
        assert!(Dialect::Sqlite.accepts("VARCHAR(20)", Kind::Text));
        assert!(!Dialect::Sqlite.accepts("INTEGER", Kind::Text));
        assert!(Dialect::Sqlite.accepts("", Kind::Text));
        assert!(Dialect::MySql.accepts("datetime", Kind::Timestamp { utc: true }));
        assert!(!Dialect::MySql.accepts("date", Kind::Timestamp { utc: false }));
    }

    #[test]
    fn long_names_are_refused_where_they_would_be_cut() {
        let long = "x".repeat(64);
        assert!(Dialect::Postgres.check_identifier(&long).is_err());
        assert!(Dialect::MySql.check_identifier(&long).is_ok());
        assert!(Dialect::Sqlite.check_identifier(&long).is_ok());
    }
}
