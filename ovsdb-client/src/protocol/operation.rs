//! `transact` operations (RFC 7047 §5.2), their results, and the errors a
//! transaction can end with.
//!
//! Operations are plain data built with small builders and serialized exactly to
//! the wire shape, so a transaction can be inspected, logged (by shape) and tested
//! without a server. [`parse_results`] pairs the server's result array with the
//! operations that produced it: one result per operation, or the first failing
//! operation's error, or the trailing commit error the server appends (an array one
//! longer than the operations) when a deferred check such as a unique index or
//! referential integrity fails.

use std::fmt;
use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::Value as Json;
use serde_json::value::RawValue;

use crate::protocol::datum::{Atom, Uuid, Value};
use crate::protocol::row::Row;
use crate::protocol::schema::DatabaseSchema;

/// A comparison function in a `where` clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Function {
    /// `<` (integers and reals).
    Lt,
    /// `<=` (integers and reals).
    Le,
    /// `==`.
    Eq,
    /// `!=`.
    Ne,
    /// `>=` (integers and reals).
    Ge,
    /// `>` (integers and reals).
    Gt,
    /// The column's set or map contains the value.
    Includes,
    /// The column's set or map contains none of the value.
    Excludes,
}

impl Function {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
            Self::Ge => ">=",
            Self::Gt => ">",
            Self::Includes => "includes",
            Self::Excludes => "excludes",
        }
    }
}

/// One clause of a `where`: `[column, function, value]`, or the constant `true` or
/// `false` that `monitor_cond` conditions also use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `[column, function, value]`.
    Clause {
        /// Column name (`_uuid` included).
        column: Arc<str>,
        /// Comparison.
        function: Function,
        /// Right-hand side.
        value: Value,
    },
    /// Matches every row (`true`) or none (`false`).
    Constant(bool),
}

macro_rules! condition_ctors {
    ($($(#[$doc:meta])* $name:ident => $f:ident),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(column: impl Into<Arc<str>>, value: impl Into<Value>) -> Self {
            Self::new(column, Function::$f, value)
        }
    )*};
}

impl Condition {
    /// `[column, function, value]`.
    pub fn new(column: impl Into<Arc<str>>, function: Function, value: impl Into<Value>) -> Self {
        Self::Clause {
            column: column.into(),
            function,
            value: value.into(),
        }
    }

    condition_ctors! {
        /// `column < value`.
        lt => Lt,
        /// `column <= value`.
        le => Le,
        /// `column == value`.
        eq => Eq,
        /// `column != value`.
        ne => Ne,
        /// `column >= value`.
        ge => Ge,
        /// `column > value`.
        gt => Gt,
        /// The column includes every element (or map entry) of `value`.
        includes => Includes,
        /// The column includes no element (or map entry) of `value`.
        excludes => Excludes,
    }

    /// `_uuid == ["uuid", uuid]`: the one row with this uuid.
    pub fn uuid_is(uuid: Uuid) -> Self {
        Self::eq("_uuid", Value::uuid(uuid))
    }

    /// The column named by a clause; `None` for a constant.
    pub fn column(&self) -> Option<&str> {
        match self {
            Self::Clause { column, .. } => Some(column),
            Self::Constant(_) => None,
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).expect("a condition always serializes")
    }
}

impl Serialize for Condition {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Clause {
                column,
                function,
                value,
            } => (&**column, function.as_str(), value).serialize(s),
            Self::Constant(b) => s.serialize_bool(*b),
        }
    }
}

/// How a mutation changes a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mutator {
    /// `+=` (integers, reals; element-wise for sets).
    Add,
    /// `-=`.
    Sub,
    /// `*=`.
    Mul,
    /// `/=`.
    Div,
    /// `%=` (integers).
    Rem,
    /// Adds set elements or map entries (existing map keys keep their value).
    Insert,
    /// Removes set elements, map entries, or map keys (given as a set).
    Delete,
}

impl Mutator {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "+=",
            Self::Sub => "-=",
            Self::Mul => "*=",
            Self::Div => "/=",
            Self::Rem => "%=",
            Self::Insert => "insert",
            Self::Delete => "delete",
        }
    }
}

/// One `[column, mutator, value]` of a `mutate`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mutation {
    /// Column name.
    pub column: Arc<str>,
    /// The change.
    pub mutator: Mutator,
    /// Its argument.
    pub value: Value,
}

macro_rules! mutation_ctors {
    ($($(#[$doc:meta])* $name:ident => $m:ident),* $(,)?) => {$(
        $(#[$doc])*
        pub fn $name(column: impl Into<Arc<str>>, value: impl Into<Value>) -> Self {
            Self::new(column, Mutator::$m, value)
        }
    )*};
}

impl Mutation {
    /// `[column, mutator, value]`.
    pub fn new(column: impl Into<Arc<str>>, mutator: Mutator, value: impl Into<Value>) -> Self {
        Self {
            column: column.into(),
            mutator,
            value: value.into(),
        }
    }

    mutation_ctors! {
        /// `column += value`.
        add => Add,
        /// `column -= value`.
        sub => Sub,
        /// `column *= value`.
        mul => Mul,
        /// `column /= value`.
        div => Div,
        /// `column %= value`.
        rem => Rem,
        /// Adds the elements or entries of `value` to the column.
        insert => Insert,
        /// Removes the elements, entries or keys in `value` from the column.
        delete => Delete,
    }

    /// The wire form.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).expect("a mutation always serializes")
    }
}

impl Serialize for Mutation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&*self.column, self.mutator.as_str(), &self.value).serialize(s)
    }
}

/// `insert`: adds a row. `uuid_name` lets later operations in the same transaction
/// refer to it as `["named-uuid", name]`; `uuid` chooses the row's uuid (an
/// ovsdb-server extension, OVS ≥ 2.13), which makes a retried insert detectable
/// (`duplicate uuid`).
#[derive(Debug, Clone, PartialEq)]
pub struct Insert {
    /// Table name.
    pub table: String,
    /// Initial column values; omitted columns get their defaults.
    pub row: Row,
    /// Name for `named-uuid` references within the transaction.
    pub uuid_name: Option<String>,
    /// Client-chosen row uuid.
    pub uuid: Option<Uuid>,
}

impl Insert {
    /// Inserts `row` into `table`.
    pub fn new(table: impl Into<String>, row: Row) -> Self {
        Self {
            table: table.into(),
            row,
            uuid_name: None,
            uuid: None,
        }
    }

    /// Sets the `uuid-name`.
    pub fn uuid_name(mut self, name: impl Into<String>) -> Self {
        self.uuid_name = Some(name.into());
        self
    }

    /// Sets the client-chosen `uuid`.
    pub fn uuid(mut self, uuid: Uuid) -> Self {
        self.uuid = Some(uuid);
        self
    }
}

/// `select`: reads matching rows, optionally only some columns.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Select {
    /// Table name.
    pub table: String,
    /// All must hold; empty matches every row.
    pub conditions: Vec<Condition>,
    /// Columns to return; `None` returns all (including `_uuid` and `_version`).
    pub columns: Option<Vec<String>>,
}

impl Select {
    /// Selects every row of `table`.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            ..Self::default()
        }
    }

    /// Adds a condition.
    pub fn filter(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }

    /// Restricts the returned columns.
    pub fn columns<S: Into<String>>(mut self, columns: impl IntoIterator<Item = S>) -> Self {
        self.columns = Some(columns.into_iter().map(Into::into).collect());
        self
    }
}

/// `update`: sets columns of every matching row.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Table name.
    pub table: String,
    /// All must hold; empty matches every row.
    pub conditions: Vec<Condition>,
    /// New values of the columns to change (mutable columns only).
    pub row: Row,
}

impl Update {
    /// Updates rows of `table` with `row`; add conditions with [`Update::filter`].
    pub fn new(table: impl Into<String>, row: Row) -> Self {
        Self {
            table: table.into(),
            conditions: Vec::new(),
            row,
        }
    }

    /// Adds a condition.
    pub fn filter(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }
}

/// `mutate`: changes columns of every matching row relative to their value.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutate {
    /// Table name.
    pub table: String,
    /// All must hold; empty matches every row.
    pub conditions: Vec<Condition>,
    /// Applied in order.
    pub mutations: Vec<Mutation>,
}

impl Mutate {
    /// Mutates rows of `table`; add conditions and mutations with the builders.
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            conditions: Vec::new(),
            mutations: Vec::new(),
        }
    }

    /// Adds a condition.
    pub fn filter(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }

    /// Adds a mutation.
    pub fn mutation(mut self, mutation: Mutation) -> Self {
        self.mutations.push(mutation);
        self
    }
}

/// `delete`: removes every matching row (fails if a strong reference remains;
/// non-root rows are normally removed by dropping their last reference instead).
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    /// Table name.
    pub table: String,
    /// All must hold; empty matches every row.
    pub conditions: Vec<Condition>,
}

impl Delete {
    /// Deletes rows of `table`; add conditions with [`Delete::filter`].
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            conditions: Vec::new(),
        }
    }

    /// Adds a condition.
    pub fn filter(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }
}

/// The comparison a `wait` waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WaitUntil {
    /// The selected rows, projected on `columns`, equal `rows`.
    Equal,
    /// They differ.
    NotEqual,
}

impl WaitUntil {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Equal => "==",
            Self::NotEqual => "!=",
        }
    }
}

/// `wait`: a precondition. With `timeout` 0 (or absent and already false) the
/// transaction fails at once with `timed out`, which is how optimistic concurrency
/// and "create only if absent" are expressed.
#[derive(Debug, Clone, PartialEq)]
pub struct Wait {
    /// Table name.
    pub table: String,
    /// Selects the rows to compare.
    pub conditions: Vec<Condition>,
    /// Columns the comparison looks at.
    pub columns: Vec<String>,
    /// `==` or `!=`.
    pub until: WaitUntil,
    /// The expected rows (projected on `columns`).
    pub rows: Vec<Row>,
    /// Milliseconds to wait; `None` waits forever, `Some(0)` fails at once.
    pub timeout: Option<u64>,
}

impl Wait {
    /// Waits until the rows of `table` matching the conditions, projected on
    /// `columns`, compare `until` to `rows`. Timeout 0; change it with
    /// [`Wait::timeout`].
    pub fn new<S: Into<String>>(
        table: impl Into<String>,
        columns: impl IntoIterator<Item = S>,
        until: WaitUntil,
        rows: Vec<Row>,
    ) -> Self {
        Self {
            table: table.into(),
            conditions: Vec::new(),
            columns: columns.into_iter().map(Into::into).collect(),
            until,
            rows,
            timeout: Some(0),
        }
    }

    /// Fails the transaction unless no row of `table` matches `conditions`: the
    /// guard that makes a replayed create fail with `timed out` instead of
    /// duplicating. The compared columns are those the conditions name.
    pub fn absent(table: impl Into<String>, conditions: Vec<Condition>) -> Self {
        let mut columns: Vec<String> = conditions
            .iter()
            .filter_map(Condition::column)
            .map(str::to_owned)
            .collect();
        columns.sort();
        columns.dedup();
        Self {
            conditions,
            ..Self::new(table, columns, WaitUntil::Equal, Vec::new())
        }
    }

    /// Adds a condition.
    pub fn filter(mut self, condition: Condition) -> Self {
        self.conditions.push(condition);
        self
    }

    /// Sets the timeout in milliseconds; `None` waits forever.
    pub fn timeout(mut self, timeout_ms: Option<u64>) -> Self {
        self.timeout = timeout_ms;
        self
    }
}

/// One operation of a `transact` request.
#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// See [`Insert`].
    Insert(Insert),
    /// See [`Select`].
    Select(Select),
    /// See [`Update`].
    Update(Update),
    /// See [`Mutate`].
    Mutate(Mutate),
    /// See [`Delete`].
    Delete(Delete),
    /// See [`Wait`].
    Wait(Wait),
    /// Commits; with `durable`, only once the change is on disk.
    Commit {
        /// Wait for the disk.
        durable: bool,
    },
    /// Aborts the transaction (every operation fails with `aborted`); a dry run.
    Abort,
    /// A comment recorded in the database log.
    Comment(String),
    /// Fails with `not owner` unless this session holds the named lock.
    Assert {
        /// Lock name.
        lock: String,
    },
}

macro_rules! into_operation {
    ($($t:ident),*) => {$(
        impl From<$t> for Operation {
            fn from(op: $t) -> Self {
                Self::$t(op)
            }
        }
    )*};
}
into_operation!(Insert, Select, Update, Mutate, Delete, Wait);

impl Operation {
    /// A `comment` operation.
    pub fn comment(text: impl Into<String>) -> Self {
        Self::Comment(text.into())
    }

    /// The `op` name on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Insert(_) => "insert",
            Self::Select(_) => "select",
            Self::Update(_) => "update",
            Self::Mutate(_) => "mutate",
            Self::Delete(_) => "delete",
            Self::Wait(_) => "wait",
            Self::Commit { .. } => "commit",
            Self::Abort => "abort",
            Self::Comment(_) => "comment",
            Self::Assert { .. } => "assert",
        }
    }

    /// The table the operation reads or writes, if any.
    pub fn table(&self) -> Option<&str> {
        match self {
            Self::Insert(o) => Some(&o.table),
            Self::Select(o) => Some(&o.table),
            Self::Update(o) => Some(&o.table),
            Self::Mutate(o) => Some(&o.table),
            Self::Delete(o) => Some(&o.table),
            Self::Wait(o) => Some(&o.table),
            Self::Commit { .. } | Self::Abort | Self::Comment(_) | Self::Assert { .. } => None,
        }
    }

    /// The wire form.
    pub fn to_json(&self) -> Json {
        serde_json::to_value(self).expect("an operation always serializes")
    }
}

/// Operations serialize straight to the wire form, with no intermediate JSON tree:
/// this is the hot path of every transaction.
impl Serialize for Operation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut o = s.serialize_map(None)?;
        o.serialize_entry("op", self.name())?;
        if let Some(t) = self.table() {
            o.serialize_entry("table", t)?;
        }
        match self {
            Self::Insert(i) => {
                o.serialize_entry("row", &i.row)?;
                if let Some(n) = &i.uuid_name {
                    o.serialize_entry("uuid-name", n)?;
                }
                if let Some(u) = &i.uuid {
                    o.serialize_entry(
                        "uuid",
                        u.hyphenated().encode_lower(&mut Uuid::encode_buffer()),
                    )?;
                }
            }
            Self::Select(sel) => {
                o.serialize_entry("where", &sel.conditions)?;
                if let Some(c) = &sel.columns {
                    o.serialize_entry("columns", c)?;
                }
            }
            Self::Update(u) => {
                o.serialize_entry("where", &u.conditions)?;
                o.serialize_entry("row", &u.row)?;
            }
            Self::Mutate(m) => {
                o.serialize_entry("where", &m.conditions)?;
                o.serialize_entry("mutations", &m.mutations)?;
            }
            Self::Delete(d) => o.serialize_entry("where", &d.conditions)?,
            Self::Wait(w) => {
                o.serialize_entry("where", &w.conditions)?;
                o.serialize_entry("columns", &w.columns)?;
                o.serialize_entry("until", w.until.as_str())?;
                o.serialize_entry("rows", &w.rows)?;
                if let Some(t) = w.timeout {
                    o.serialize_entry("timeout", &t)?;
                }
            }
            Self::Commit { durable } => o.serialize_entry("durable", durable)?,
            Self::Abort => {}
            Self::Comment(c) => o.serialize_entry("comment", c)?,
            Self::Assert { lock } => o.serialize_entry("lock", lock)?,
        }
        o.end()
    }
}

/// The `params` of a `transact` request, serialized without building them as a
/// JSON tree: the database name, then the operations.
pub(crate) struct TransactParams<'a> {
    /// The database.
    pub database: &'a str,
    /// The operations, in order.
    pub operations: &'a [Operation],
}

impl Serialize for TransactParams<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.operations.len() + 1))?;
        seq.serialize_element(self.database)?;
        for op in self.operations {
            seq.serialize_element(op)?;
        }
        seq.end()
    }
}

/// The `params` of a `transact` request: the database name, then the operations.
pub fn transact_params(database: &str, operations: &[Operation]) -> Json {
    serde_json::to_value(TransactParams {
        database,
        operations,
    })
    .expect("operations always serialize")
}

/// The error tags OVSDB servers use, from RFC 7047 and ovsdb-server's extensions.
/// Unknown tags are kept verbatim in [`ErrorKind::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// `referential integrity violation`: a reference to a missing row, or a
    /// delete of a row still strongly referenced.
    ReferentialIntegrityViolation,
    /// `constraint violation`: a value out of its type's range, enum or count, or
    /// a duplicate in a unique index.
    ConstraintViolation,
    /// `resources exhausted`.
    ResourcesExhausted,
    /// `I/O error`.
    IoError,
    /// `duplicate uuid-name`.
    DuplicateUuidName,
    /// `domain error` (e.g. division by zero in a mutation).
    DomainError,
    /// `range error` (a mutation result out of range).
    RangeError,
    /// `timed out`: a `wait` precondition did not hold; retry after the cache
    /// catches up.
    TimedOut,
    /// `not supported`.
    NotSupported,
    /// `aborted` (an `abort` operation).
    Aborted,
    /// `not owner` (an `assert` on a lock this session does not hold).
    NotOwner,
    /// `syntax error`.
    SyntaxError,
    /// `unknown column`.
    UnknownColumn,
    /// `duplicate uuid`: an insert with a client-chosen uuid that already exists.
    DuplicateUuid,
    /// `internal error`.
    InternalError,
    /// `ovsdb error`.
    OvsdbError,
    /// `permission error` (RBAC).
    PermissionError,
    /// `unknown database`.
    UnknownDatabase,
    /// `unknown method`.
    UnknownMethod,
    /// `unknown monitor`.
    UnknownMonitor,
    /// `canceled`: the database was removed or converted.
    Canceled,
    /// Any other tag, verbatim.
    Other(String),
}

impl ErrorKind {
    /// Maps a wire tag to its kind.
    pub fn from_tag(tag: &str) -> Self {
        match tag {
            "referential integrity violation" => Self::ReferentialIntegrityViolation,
            "constraint violation" => Self::ConstraintViolation,
            "resources exhausted" => Self::ResourcesExhausted,
            "I/O error" => Self::IoError,
            "duplicate uuid-name" => Self::DuplicateUuidName,
            "domain error" => Self::DomainError,
            "range error" => Self::RangeError,
            "timed out" => Self::TimedOut,
            "not supported" => Self::NotSupported,
            "aborted" => Self::Aborted,
            "not owner" => Self::NotOwner,
            "syntax error" => Self::SyntaxError,
            "unknown column" => Self::UnknownColumn,
            "duplicate uuid" => Self::DuplicateUuid,
            "internal error" => Self::InternalError,
            "ovsdb error" => Self::OvsdbError,
            "permission error" => Self::PermissionError,
            "unknown database" => Self::UnknownDatabase,
            "unknown method" => Self::UnknownMethod,
            "unknown monitor" => Self::UnknownMonitor,
            "canceled" => Self::Canceled,
            other => Self::Other(other.to_owned()),
        }
    }

    /// The wire tag.
    pub fn tag(&self) -> &str {
        match self {
            Self::ReferentialIntegrityViolation => "referential integrity violation",
            Self::ConstraintViolation => "constraint violation",
            Self::ResourcesExhausted => "resources exhausted",
            Self::IoError => "I/O error",
            Self::DuplicateUuidName => "duplicate uuid-name",
            Self::DomainError => "domain error",
            Self::RangeError => "range error",
            Self::TimedOut => "timed out",
            Self::NotSupported => "not supported",
            Self::Aborted => "aborted",
            Self::NotOwner => "not owner",
            Self::SyntaxError => "syntax error",
            Self::UnknownColumn => "unknown column",
            Self::DuplicateUuid => "duplicate uuid",
            Self::InternalError => "internal error",
            Self::OvsdbError => "ovsdb error",
            Self::PermissionError => "permission error",
            Self::UnknownDatabase => "unknown database",
            Self::UnknownMethod => "unknown method",
            Self::UnknownMonitor => "unknown monitor",
            Self::Canceled => "canceled",
            Self::Other(s) => s,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.tag())
    }
}

/// An error object from the server: `{"error": tag, "details": …, "syntax": …}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}{}", details.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct OvsdbError {
    /// The tag, typed.
    pub kind: ErrorKind,
    /// The server's explanation.
    pub details: Option<String>,
    /// The offending request text, for syntax-like errors.
    pub syntax: Option<String>,
}

impl OvsdbError {
    /// Reads an error object; `None` if `json` is not one (no string `error`).
    pub fn from_json(json: &Json) -> Option<Self> {
        let obj = json.as_object()?;
        let tag = obj.get("error")?.as_str()?;
        let text = |k: &str| match obj.get(k) {
            None | Some(Json::Null) => None,
            Some(Json::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        };
        Some(Self {
            kind: ErrorKind::from_tag(tag),
            details: text("details"),
            syntax: text("syntax"),
        })
    }
}

/// Why a transaction did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransactError {
    /// Operation `index` (0-based) failed; nothing was committed.
    #[error("operation {index} ({op}) failed: {error}")]
    Operation {
        /// Position in the request.
        index: usize,
        /// The operation's name (`insert`, `wait`, …).
        op: &'static str,
        /// The server's error.
        error: OvsdbError,
    },
    /// Every operation succeeded but the commit failed a deferred check (unique
    /// index, referential integrity); nothing was committed.
    #[error("commit failed: {error}")]
    Commit {
        /// The server's error.
        error: OvsdbError,
    },
    /// The reply does not fit the request.
    #[error("malformed transact reply: {0}")]
    Malformed(String),
}

impl TransactError {
    /// The server's error, if the server gave one.
    pub fn ovsdb_error(&self) -> Option<&OvsdbError> {
        match self {
            Self::Operation { error, .. } | Self::Commit { error } => Some(error),
            Self::Malformed(_) => None,
        }
    }

    /// Whether a `wait` precondition failed (`timed out`): the caller's view was
    /// stale, so refresh and retry.
    pub fn is_timed_out(&self) -> bool {
        self.ovsdb_error()
            .is_some_and(|e| e.kind == ErrorKind::TimedOut)
    }
}

/// The result of one successful operation.
#[derive(Debug, Clone, PartialEq)]
pub enum OperationResult {
    /// `insert`: the new row's uuid.
    Inserted(Uuid),
    /// `select`: the matching rows.
    Rows(Vec<Row>),
    /// `update`, `mutate`, `delete`: how many rows matched.
    Count(u64),
    /// `wait`, `commit`, `abort`, `comment`, `assert`.
    Done,
}

impl OperationResult {
    /// The inserted uuid.
    pub fn uuid(&self) -> Option<Uuid> {
        match self {
            Self::Inserted(u) => Some(*u),
            _ => None,
        }
    }

    /// The selected rows.
    pub fn rows(&self) -> Option<&[Row]> {
        match self {
            Self::Rows(r) => Some(r),
            _ => None,
        }
    }

    /// The matched-row count.
    pub fn count(&self) -> Option<u64> {
        match self {
            Self::Count(c) => Some(*c),
            _ => None,
        }
    }
}

/// Pairs a `transact` result array with its operations.
///
/// With a schema, selected rows are decoded with their table's column types (see
/// [`Row::from_json_typed`]); without one they are decoded untyped.
pub fn parse_results(
    operations: &[Operation],
    result: &Json,
    schema: Option<&DatabaseSchema>,
) -> Result<Vec<OperationResult>, TransactError> {
    let malformed = |m: String| TransactError::Malformed(m);
    let items = result
        .as_array()
        .ok_or_else(|| malformed(format!("result is not an array: {}", kind_of(result))))?;
    // An operation's error wins over a length mismatch: the server stops at it.
    for (index, item) in items.iter().enumerate().take(operations.len()) {
        if let Some(error) = OvsdbError::from_json(item) {
            return Err(TransactError::Operation {
                index,
                op: operations[index].name(),
                error,
            });
        }
    }
    if items.len() == operations.len() + 1 {
        let trailing = &items[operations.len()];
        return Err(match OvsdbError::from_json(trailing) {
            Some(error) => TransactError::Commit { error },
            None => malformed(format!(
                "extra result element is not an error: {}",
                kind_of(trailing)
            )),
        });
    }
    if items.len() != operations.len() {
        return Err(malformed(format!(
            "{} results for {} operations",
            items.len(),
            operations.len()
        )));
    }
    operations
        .iter()
        .zip(items)
        .enumerate()
        .map(|(i, (op, item))| {
            parse_one(op, item, schema)
                .map_err(|m| malformed(format!("operation {i} ({}): {m}", op.name())))
        })
        .collect()
}

/// [`parse_results`] from the reply's JSON text. The common case (every operation
/// succeeded) is decoded straight from the text; anything else (an error, a
/// mismatch) takes the general path, which words the error.
pub fn parse_raw_results(
    operations: &[Operation],
    result: &RawValue,
    schema: Option<&DatabaseSchema>,
) -> Result<Vec<OperationResult>, TransactError> {
    if let Some(results) = parse_successes(operations, result.get(), schema) {
        return Ok(results);
    }
    let json: Json = serde_json::from_str(result.get())
        .map_err(|e| TransactError::Malformed(format!("result is not JSON: {e}")))?;
    parse_results(operations, &json, schema)
}

/// One element of a successful result array, borrowed from the reply.
#[derive(serde::Deserialize)]
struct Success<'a> {
    #[serde(default)]
    uuid: Option<Atom>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default, borrow)]
    rows: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

fn parse_successes(
    operations: &[Operation],
    text: &str,
    schema: Option<&DatabaseSchema>,
) -> Option<Vec<OperationResult>> {
    let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    if items.len() != operations.len() {
        return None;
    }
    operations
        .iter()
        .zip(items)
        .map(|(op, item)| {
            // Only an object is a result (serde would also read a struct from an array).
            if !item.get().starts_with('{') {
                return None;
            }
            let item: Success<'_> = serde_json::from_str(item.get()).ok()?;
            if item.error.is_some() {
                return None;
            }
            match op {
                Operation::Insert(_) => match item.uuid? {
                    Atom::Uuid(u) => Some(OperationResult::Inserted(u)),
                    _ => None,
                },
                Operation::Select(_) => {
                    let rows: Json = serde_json::from_str(item.rows?.get()).ok()?;
                    let rows = serde_json::json!({ "rows": rows });
                    parse_one(op, &rows, schema).ok()
                }
                Operation::Update(_) | Operation::Mutate(_) | Operation::Delete(_) => {
                    item.count.map(OperationResult::Count)
                }
                Operation::Wait(_)
                | Operation::Commit { .. }
                | Operation::Abort
                | Operation::Comment(_)
                | Operation::Assert { .. } => Some(OperationResult::Done),
            }
        })
        .collect()
}

fn parse_one(
    op: &Operation,
    item: &Json,
    schema: Option<&DatabaseSchema>,
) -> Result<OperationResult, String> {
    let obj = item
        .as_object()
        .ok_or_else(|| format!("result is {}, not an object", kind_of(item)))?;
    let member = |k: &str| obj.get(k).ok_or_else(|| format!("result lacks \"{k}\""));
    match op {
        Operation::Insert(_) => match Atom::from_json(member("uuid")?) {
            Ok(Atom::Uuid(u)) => Ok(OperationResult::Inserted(u)),
            _ => Err("\"uuid\" is not [\"uuid\", …]".into()),
        },
        Operation::Select(s) => {
            let rows = member("rows")?
                .as_array()
                .ok_or("\"rows\" is not an array")?;
            let table = schema.and_then(|sc| sc.table(&s.table));
            rows.iter()
                .map(|r| match table {
                    Some(t) => Row::from_json_typed(r, t),
                    None => Row::from_json(r),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(OperationResult::Rows)
                .map_err(|e| e.to_string())
        }
        Operation::Update(_) | Operation::Mutate(_) | Operation::Delete(_) => member("count")?
            .as_u64()
            .map(OperationResult::Count)
            .ok_or_else(|| "\"count\" is not a non-negative integer".into()),
        Operation::Wait(_)
        | Operation::Commit { .. }
        | Operation::Abort
        | Operation::Comment(_)
        | Operation::Assert { .. } => Ok(OperationResult::Done),
    }
}

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lsp_row() -> Row {
        Row::new()
            .with("name", "vm1-eth0")
            .with("addresses", Value::set(["0a:00:00:00:00:05 10.0.0.5"]))
            .with("port_security", Value::set(["0a:00:00:00:00:05 10.0.0.5"]))
            .with(
                "options",
                Value::map([
                    ("requested-chassis", "node-a,node-b"),
                    ("activation-strategy", "rarp"),
                ]),
            )
            .with(
                "external_ids",
                Value::map([("vendor", "example"), ("pod", "ns/vm1")]),
            )
    }

    /// The request of ovsdb-protocol.md §3.1, byte for byte in meaning.
    #[test]
    fn insert_mutate_comment_matches_the_captured_request() {
        let ops: Vec<Operation> = vec![
            Insert::new("Logical_Switch_Port", lsp_row())
                .uuid_name("new_lsp")
                .into(),
            Mutate::new("Logical_Switch")
                .filter(Condition::eq("name", "ls1"))
                .mutation(Mutation::insert(
                    "ports",
                    Value::set([Atom::named_uuid("new_lsp")]),
                ))
                .into(),
            Operation::comment("lsp-add ls1 vm1-eth0"),
        ];
        assert_eq!(
            transact_params("OVN_Northbound", &ops),
            json!(["OVN_Northbound",
             {"op":"insert","table":"Logical_Switch_Port","uuid-name":"new_lsp",
              "row":{"name":"vm1-eth0",
                     "addresses":["set",["0a:00:00:00:00:05 10.0.0.5"]],
                     "port_security":["set",["0a:00:00:00:00:05 10.0.0.5"]],
                     "options":["map",[["requested-chassis","node-a,node-b"],["activation-strategy","rarp"]]],
                     "external_ids":["map",[["vendor","example"],["pod","ns/vm1"]]]}},
             {"op":"mutate","table":"Logical_Switch","where":[["name","==","ls1"]],
              "mutations":[["ports","insert",["set",[["named-uuid","new_lsp"]]]]]},
             {"op":"comment","comment":"lsp-add ls1 vm1-eth0"}])
            .as_array()
            .map(|a| {
                // Maps are sorted by key in our encoding; compare as decoded values.
                let mut a = a.clone();
                let row = a[1]["row"].as_object_mut().unwrap();
                for k in ["options", "external_ids"] {
                    row[k] = Value::from_json(&row[k]).unwrap().to_json();
                }
                Json::Array(a)
            })
            .unwrap()
        );
    }

    #[test]
    fn wait_precondition_matches_the_python_idl_shape() {
        let ls = Uuid::parse_str("e75a0303-d68b-4a80-837d-722079cb8f29").unwrap();
        let port = Uuid::parse_str("148aa517-2b8e-4530-90cb-07ac82408f16").unwrap();
        let op: Operation = Wait::new(
            "Logical_Switch",
            ["ports"],
            WaitUntil::Equal,
            vec![Row::new().with("ports", Value::set([port]))],
        )
        .filter(Condition::uuid_is(ls))
        .into();
        assert_eq!(
            op.to_json(),
            json!({"op":"wait","table":"Logical_Switch","timeout":0,
                   "where":[["_uuid","==",["uuid","e75a0303-d68b-4a80-837d-722079cb8f29"]]],
                   "until":"==","columns":["ports"],
                   "rows":[{"ports":["set",[["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]]]}]})
        );
        let absent: Operation = Wait::absent(
            "Logical_Switch_Port",
            vec![Condition::eq("name", "vm1-eth0")],
        )
        .into();
        assert_eq!(
            absent.to_json(),
            json!({"op":"wait","table":"Logical_Switch_Port","timeout":0,"where":[["name","==","vm1-eth0"]],
                   "until":"==","columns":["name"],"rows":[]})
        );
        let forever: Operation = Wait::new("T", ["c"], WaitUntil::NotEqual, vec![])
            .timeout(None)
            .into();
        assert_eq!(
            forever.to_json(),
            json!({"op":"wait","table":"T","where":[],"until":"!=","columns":["c"],"rows":[]})
        );
    }

    #[test]
    fn every_operation_shape() {
        let u = Uuid::parse_str("6f0b3c6e-0000-4000-8000-000000000001").unwrap();
        let cases: Vec<(Operation, Json)> = vec![
            (
                Insert::new("Logical_Switch", Row::new().with("name", "ls1"))
                    .uuid(u)
                    .into(),
                json!({"op":"insert","table":"Logical_Switch","row":{"name":"ls1"},"uuid":"6f0b3c6e-0000-4000-8000-000000000001"}),
            ),
            (
                Select::new("Logical_Switch").into(),
                json!({"op":"select","table":"Logical_Switch","where":[]}),
            ),
            (
                Select::new("Logical_Switch")
                    .filter(Condition::includes(
                        "external_ids",
                        Value::map([("pod", "ns/a")]),
                    ))
                    .columns(["_uuid", "name"])
                    .into(),
                json!({"op":"select","table":"Logical_Switch",
                       "where":[["external_ids","includes",["map",[["pod","ns/a"]]]]],"columns":["_uuid","name"]}),
            ),
            (
                Update::new(
                    "Logical_Switch_Port",
                    Row::new().with("enabled", Value::set([false])),
                )
                .filter(Condition::uuid_is(u))
                .into(),
                json!({"op":"update","table":"Logical_Switch_Port",
                       "where":[["_uuid","==",["uuid","6f0b3c6e-0000-4000-8000-000000000001"]]],
                       "row":{"enabled":["set",[false]]}}),
            ),
            (
                Delete::new("Address_Set")
                    .filter(Condition::ne("name", "keep"))
                    .into(),
                json!({"op":"delete","table":"Address_Set","where":[["name","!=","keep"]]}),
            ),
            (
                Operation::Commit { durable: true },
                json!({"op":"commit","durable":true}),
            ),
            (Operation::Abort, json!({"op":"abort"})),
            (
                Operation::Assert {
                    lock: "mylock".into(),
                },
                json!({"op":"assert","lock":"mylock"}),
            ),
        ];
        for (op, want) in cases {
            assert_eq!(op.to_json(), want, "{}", op.name());
            assert_eq!(serde_json::to_value(&op).unwrap(), want);
        }
    }

    #[test]
    fn every_function_and_mutator() {
        let conds = [
            Condition::lt("c", 1),
            Condition::le("c", 1),
            Condition::eq("c", 1),
            Condition::ne("c", 1),
            Condition::ge("c", 1),
            Condition::gt("c", 1),
            Condition::includes("c", 1),
            Condition::excludes("c", 1),
        ];
        let got: Vec<Json> = conds.iter().map(Condition::to_json).collect();
        assert_eq!(
            got,
            ["<", "<=", "==", "!=", ">=", ">", "includes", "excludes"]
                .map(|f| json!(["c", f, 1]))
                .to_vec()
        );
        assert_eq!(Condition::Constant(true).to_json(), json!(true));
        let muts = [
            Mutation::add("c", 2),
            Mutation::sub("c", 2),
            Mutation::mul("c", 2),
            Mutation::div("c", 2),
            Mutation::rem("c", 2),
            Mutation::insert("c", 2),
            Mutation::delete("c", 2),
        ];
        let got: Vec<Json> = muts.iter().map(Mutation::to_json).collect();
        assert_eq!(
            got,
            ["+=", "-=", "*=", "/=", "%=", "insert", "delete"]
                .map(|m| json!(["c", m, 2]))
                .to_vec()
        );
    }

    fn three_ops() -> Vec<Operation> {
        vec![
            Insert::new("Logical_Switch_Port", Row::new())
                .uuid_name("a")
                .into(),
            Mutate::new("Logical_Switch").into(),
            Operation::comment("x"),
        ]
    }

    #[test]
    fn results_per_operation() {
        let r = parse_results(
            &three_ops(),
            &json!([{"uuid":["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]},{"count":1},{}]),
            None,
        )
        .unwrap();
        assert_eq!(
            r[0].uuid().unwrap().to_string(),
            "148aa517-2b8e-4530-90cb-07ac82408f16"
        );
        assert_eq!(r[1].count(), Some(1));
        assert_eq!(r[2], OperationResult::Done);
    }

    #[test]
    fn select_rows_are_typed_with_a_schema() {
        let nb = DatabaseSchema::parse(include_str!("../../schemas/ovn-nb.ovsschema")).unwrap();
        let ops = [Operation::from(Select::new("Logical_Switch_Port"))];
        let reply = json!([{"rows":[{"name":"p","addresses":"0a:00:00:00:00:07 10.0.0.7","up":["set",[]]}]}]);
        let r = parse_results(&ops, &reply, Some(&nb)).unwrap();
        let row = &r[0].rows().unwrap()[0];
        assert_eq!(
            row.get("addresses"),
            Some(&Value::set(["0a:00:00:00:00:07 10.0.0.7"]))
        );
        let untyped = parse_results(&ops, &reply, None).unwrap();
        assert_eq!(
            untyped[0].rows().unwrap()[0].get("addresses"),
            Some(&Value::from("0a:00:00:00:00:07 10.0.0.7"))
        );
    }

    #[test]
    fn operation_errors_carry_index_and_kind() {
        let ops = vec![
            Operation::from(Wait::absent("T", vec![Condition::eq("name", "x")])),
            Operation::comment("c"),
        ];
        let err = parse_results(
            &ops,
            &json!([{"error":"timed out","details":"\"where\" clause test failed"},null]),
            None,
        )
        .unwrap_err();
        assert!(err.is_timed_out());
        assert_eq!(
            err,
            TransactError::Operation {
                index: 0,
                op: "wait",
                error: OvsdbError {
                    kind: ErrorKind::TimedOut,
                    details: Some("\"where\" clause test failed".into()),
                    syntax: None
                }
            }
        );
        assert_eq!(
            err.to_string(),
            "operation 0 (wait) failed: timed out: \"where\" clause test failed"
        );

        let err = parse_results(
            &three_ops(),
            &json!([{"uuid":["uuid","e79173a2-0000-4000-8000-000000000000"]},
                    {"error":"duplicate uuid-name","details":"This \"uuid-name\" appeared on an earlier \"insert\" operation.","syntax":"\"a\""},
                    null]),
            None,
        )
        .unwrap_err();
        let TransactError::Operation { index, error, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(*index, 1);
        assert_eq!(error.kind, ErrorKind::DuplicateUuidName);
        assert_eq!(error.syntax.as_deref(), Some("\"a\""));
    }

    #[test]
    fn trailing_commit_error() {
        let ops = vec![
            Operation::from(Insert::new("Logical_Switch_Port", Row::new())),
            Mutate::new("Logical_Switch").into(),
        ];
        let err = parse_results(
            &ops,
            &json!([{"uuid":["uuid","02e95545-0000-4000-8000-000000000000"]},{"count":1},
                    {"error":"constraint violation","details":"Transaction causes multiple rows in \"Logical_Switch_Port\" table to have identical values (vm1-eth0) for index on column \"name\"."}]),
            None,
        )
        .unwrap_err();
        let TransactError::Commit { error } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(error.kind, ErrorKind::ConstraintViolation);

        let err = parse_results(
            &ops[1..],
            &json!([{"count":1},{"error":"referential integrity violation","details":"cannot delete Logical_Switch_Port row 148a… because of 1 remaining reference(s)"}]),
            None,
        )
        .unwrap_err();
        assert_eq!(
            err.ovsdb_error().unwrap().kind,
            ErrorKind::ReferentialIntegrityViolation
        );
    }

    #[test]
    fn every_known_tag_round_trips_and_unknown_is_kept() {
        for tag in [
            "referential integrity violation",
            "constraint violation",
            "resources exhausted",
            "I/O error",
            "duplicate uuid-name",
            "domain error",
            "range error",
            "timed out",
            "not supported",
            "aborted",
            "not owner",
            "syntax error",
            "unknown column",
            "duplicate uuid",
            "internal error",
            "ovsdb error",
            "permission error",
            "unknown database",
            "unknown method",
            "unknown monitor",
            "canceled",
        ] {
            let kind = ErrorKind::from_tag(tag);
            assert!(!matches!(kind, ErrorKind::Other(_)), "{tag}");
            assert_eq!(kind.tag(), tag);
        }
        let e = OvsdbError::from_json(&json!({"error":"brand new error","details":"d"})).unwrap();
        assert_eq!(e.kind, ErrorKind::Other("brand new error".into()));
        assert_eq!(e.to_string(), "brand new error: d");
    }

    #[test]
    fn malformed_replies_are_errors() {
        let ops = three_ops();
        for bad in [
            json!(null),
            json!({}),
            json!([]),
            json!([{}, {"count":1}, {}]),
            json!([{"uuid":"nope"}, {"count":1}, {}]),
            json!([{"uuid":["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]}, {"count":-1}, {}]),
            json!([{"uuid":["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]}, {"count":1}, {}, {}]),
            json!([{"uuid":["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]}, {"count":1}, {}, {}, {}]),
            json!([{"uuid":["uuid","148aa517-2b8e-4530-90cb-07ac82408f16"]}, null, {}]),
        ] {
            assert!(
                matches!(
                    parse_results(&ops, &bad, None),
                    Err(TransactError::Malformed(_))
                ),
                "{bad}"
            );
        }
    }
}
