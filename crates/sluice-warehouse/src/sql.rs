//! The SQL every warehouse runs, built in one place from a small [`Dialect`]: pages after a cursor
//! or key tuple, the full read, the key gates, the `warehouse_diff` tables and change list, and
//! the read-only plan of `sluice plan`. A backend states its choices (how a text parameter is cast
//! back to a column's type, which columns are read through their text form, whether row values
//! compare, how `warehouse_diff` tells a changed row) and never writes these statements itself.
//! Everything here is text: nothing runs, so every statement is unit-tested as a string.
//!
//! What the text guarantees, for every dialect:
//! - **Pages are strict and ordered.** A page is ordered by the cursor tuple (cursor column, then
//!   the key) or by the key alone, and starts strictly after the given tuple, so rows sharing a
//!   cursor value are neither skipped nor repeated (Kafka Connect JDBC's #598). The predicate is
//!   the row-value comparison `(a, b) > (x, y)` where the dialect has it (PostgreSQL's btree
//!   indexes serve it) or its lexicographic expansion ([`tuple_after`]), which selects the same
//!   rows.
//! - **Parameters compare exactly.** Every parameter is bound as text and cast back to its
//!   column's own type in SQL; zoned timestamps are given in UTC (`+00`). No float, decimal or
//!   time-zone conversion happens in a driver, so a stored position compares as the column does.
//! - **Reads are exact.** A column the dialect reads as text (decimals, at least) is cast to text
//!   in SQL, so `1234.500` stays `1234.500`.
//! - **Names are quoted.** Identifiers go through [`ident`] and string values through
//!   [`literal`]; a model's relation is spliced as configured (it *is* the operator's SQL).
//!
//! What it does not guarantee: that a dialect's choices are right for its engine. That is what
//! the conformance suite (`integration-tests/tests/it/poller/conformance/`) checks on every
//! backend.

use sluice_core::config::ModelConfig;
use sluice_core::{Column, ColumnType, RowSchema};

use crate::{cursor_order, value_text, Page, PageOrder, WarehouseError};

/// The schema that holds `warehouse_diff`'s tables.
pub const STATE_SCHEMA: &str = "sluice_state";

/// What differs between SQL warehouses, as choices; the statements are built from these.
#[derive(Debug, Clone, Copy)]
pub struct Dialect {
    /// The SQL type of text (`text`, `VARCHAR`): what a column read through its text form is
    /// cast to.
    pub text_type: &'static str,
    /// Parameter `n` (1-based), bound as text, as an expression of type text: `$1` where the
    /// engine types a parameter from its cast, `$1::text` where it must be told first (PostgreSQL
    /// would otherwise expect the binary form of the cast's target type).
    pub text_param: fn(usize) -> String,
    /// The SQL type a text parameter is cast to so that it compares exactly as a column of this
    /// type does (`numeric`, `DECIMAL(12,2)`, `timestamptz`…).
    pub cast_type: fn(ColumnType) -> String,
    /// Whether a column of this type is read through its text form: decimals (exact), and
    /// whatever the driver cannot read natively.
    pub reads_text: fn(ColumnType) -> bool,
    /// Whether `(a, b) > (x, y)` is available; otherwise it is spelled out ([`tuple_after`]).
    pub row_values: bool,
    /// How `warehouse_diff` tells that a kept row changed.
    pub row_comparison: RowComparison,
    /// Whether the change table gets a primary key on `sluice_seq`, so its pages are index range
    /// scans (an engine that cannot add one after `CREATE TABLE AS` pages by scanning).
    pub changes_primary_key: bool,
}

/// How `warehouse_diff` compares a model's row with the one in its kept snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowComparison {
    /// Kept rows carry `sluice_hash` = md5 of the row's text (`md5(ROW(…)::text)`, PostgreSQL);
    /// rows differ when their hashes do: one column compared per row.
    Md5RowText,
    /// Rows differ when any column `IS DISTINCT FROM` its kept value: no hash function whose
    /// output could change between engine versions.
    Columns,
}

/// A statement and its parameters, bound as text (`None` = NULL).
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sql: String,
    pub params: Vec<Option<String>>,
}

/// The `warehouse_diff` tables of one model, schema-qualified and quoted: the rows last emitted,
/// the rows of the run in progress, and that run's numbered change list.
#[derive(Debug, Clone, PartialEq)]
pub struct StateTables {
    pub snapshot: String,
    pub pending: String,
    pub changes: String,
}

impl StateTables {
    /// The tables of the model named `model`.
    pub fn of(model: &str) -> StateTables {
        let table = |suffix: &str| format!("{STATE_SCHEMA}.{}", ident(&StateTables::name(model, suffix)));
        StateTables { snapshot: table("snapshot"), pending: table("pending"), changes: table("changes") }
    }

    /// A table's own name, unqualified and unquoted (`<model>_snapshot`), for catalog lookups.
    pub fn name(model: &str, suffix: &str) -> String {
        format!("{model}_{suffix}")
    }
}

impl Dialect {
    /// The expression that reads `reference` (a column or alias) as `column`'s value: through
    /// its text form where the dialect says so.
    pub fn read(&self, reference: &str, column: &Column) -> String {
        if (self.reads_text)(column.ty) {
            format!("CAST({reference} AS {})", self.text_type)
        } else {
            reference.to_string()
        }
    }

    /// Every column of `schema`, read as [`read`](Dialect::read) says, in schema order.
    pub fn select_list(&self, schema: &RowSchema) -> String {
        schema.columns.iter().map(|c| self.read(&ident(&c.name), c)).collect::<Vec<_>>().join(", ")
    }

    /// Parameter `position`, bound as text ([`value_text`]), cast back to the type of a column of
    /// type `ty`. Zoned timestamps are rendered in UTC: the offset is said explicitly so the
    /// session's time zone cannot shift them.
    pub fn param(&self, position: usize, ty: ColumnType) -> String {
        let text = (self.text_param)(position);
        match ty {
            ColumnType::TimestampMicros { utc: true } => format!("CAST({text} || '+00' AS {})", (self.cast_type)(ty)),
            _ => format!("CAST({text} AS {})", (self.cast_type)(ty)),
        }
    }

    /// The keyset page `page` of `model`, with its parameters. Refuses a cursor page of a model
    /// that has no cursor.
    pub fn page(&self, model: &ModelConfig, schema: &RowSchema, page: &Page) -> Result<Statement, WarehouseError> {
        let indexes = match page.order {
            PageOrder::Cursor => cursor_order(model, schema)?,
            PageOrder::Key => schema.primary_key.clone(),
        };
        let order: Vec<String> = indexes.iter().map(|&i| ident(&schema.columns[i].name)).collect();
        let mut params: Vec<Option<String>> = Vec::new();
        let mut conditions = Vec::new();
        if let Some(tuple) = &page.after {
            let placeholders: Vec<String> = indexes.iter().enumerate().map(|(p, &i)| self.param(p + 1, schema.columns[i].ty)).collect();
            params = tuple.iter().map(value_text).collect();
            conditions.push(if self.row_values {
                format!("({}) > ({})", order.join(", "), placeholders.join(", "))
            } else {
                tuple_after(&order, &placeholders)
            });
        }
        if let Some(since) = &page.since {
            params.push(value_text(since));
            conditions.push(format!("{} >= {}", order[0], self.param(params.len(), schema.columns[indexes[0]].ty)));
        }
        let predicate = if conditions.is_empty() { String::new() } else { format!(" WHERE {}", conditions.join(" AND ")) };
        let sql = format!(
            "SELECT {} FROM {}{predicate} ORDER BY {} LIMIT {}",
            self.select_list(schema),
            model.relation_sql(),
            order.join(", "),
            page.limit
        );
        Ok(Statement { sql, params })
    }

    /// Every row of the model, in no particular order.
    pub fn scan(&self, model: &ModelConfig, schema: &RowSchema) -> String {
        format!("SELECT {} FROM {}", self.select_list(schema), model.relation_sql())
    }

    /// The model's rows as a snapshot keeps them: its columns as stored, plus `sluice_hash` where
    /// rows are compared by hash.
    fn kept_rows(&self, model: &ModelConfig, schema: &RowSchema) -> String {
        let list = column_list(schema);
        match self.row_comparison {
            RowComparison::Md5RowText => format!("SELECT {list}, md5(ROW({list})::text) AS sluice_hash FROM {}", model.relation_sql()),
            RowComparison::Columns => format!("SELECT {list} FROM {}", model.relation_sql()),
        }
    }

    /// A predicate over aliases `n` (new) and `o` (kept) that holds when the row changed.
    fn differs(&self, schema: &RowSchema) -> String {
        match self.row_comparison {
            RowComparison::Md5RowText => "n.sluice_hash <> o.sluice_hash".into(),
            RowComparison::Columns => schema
                .columns
                .iter()
                .map(|c| format!("n.{c} IS DISTINCT FROM o.{c}", c = ident(&c.name)))
                .collect::<Vec<_>>()
                .join(" OR "),
        }
    }

    /// `warehouse_diff`, step one (inside the caller's transaction): create the kept snapshot if
    /// this is the first run (empty: every row becomes a snapshot read), drop any older pending
    /// run, and store the model's current rows as the pending snapshot.
    pub fn build_pending(&self, model: &ModelConfig, schema: &RowSchema, tables: &StateTables) -> String {
        let kept = self.kept_rows(model, schema);
        let StateTables { snapshot, pending, changes } = tables;
        format!(
            "CREATE TABLE IF NOT EXISTS {snapshot} AS {kept} LIMIT 0; \
             DROP TABLE IF EXISTS {pending}; DROP TABLE IF EXISTS {changes}; \
             CREATE TABLE {pending} AS {kept}"
        )
    }

    /// `warehouse_diff`, step two (same transaction, after the key gates passed on the pending
    /// rows): the FULL OUTER JOIN of pending and kept rows on the key, restricted to rows that
    /// appeared, disappeared or differ, numbered in key order (`sluice_seq` from 1) so a crashed
    /// run resumes at an exact position. Columns: `sluice_seq`, `sluice_has_before`,
    /// `sluice_has_after`, the kept image `o_0…`, the new image `n_0…`.
    pub fn build_changes(&self, schema: &RowSchema, tables: &StateTables) -> String {
        let keys = key_list(schema);
        let first = &keys[0];
        let order = keys.iter().map(|k| format!("coalesce(n.{k}, o.{k})")).collect::<Vec<_>>().join(", ");
        let images: Vec<String> = ["o", "n"]
            .iter()
            .flat_map(|side| schema.columns.iter().enumerate().map(move |(i, c)| format!("{side}.{} AS {side}_{i}", ident(&c.name))))
            .collect();
        let StateTables { snapshot, pending, changes } = tables;
        let mut sql = format!(
            "CREATE TABLE {changes} AS SELECT row_number() OVER (ORDER BY {order}) AS sluice_seq, \
             (o.{first} IS NOT NULL) AS sluice_has_before, (n.{first} IS NOT NULL) AS sluice_has_after, {} \
             FROM {pending} n FULL OUTER JOIN {snapshot} o ON {} \
             WHERE n.{first} IS NULL OR o.{first} IS NULL OR ({})",
            images.join(", "),
            key_join(&keys),
            self.differs(schema)
        );
        if self.changes_primary_key {
            sql.push_str(&format!("; ALTER TABLE {changes} ADD PRIMARY KEY (sluice_seq)"));
        }
        sql
    }

    /// Up to `limit` changes of the pending run after the first `skip`, in order: the two flags
    /// (booleans), then the kept image and the new image, each read as the model's columns.
    pub fn changes_page(&self, schema: &RowSchema, tables: &StateTables, skip: u64, limit: usize) -> Statement {
        let images: Vec<String> = ["o", "n"]
            .iter()
            .flat_map(|side| schema.columns.iter().enumerate().map(move |(i, c)| self.read(&format!("{side}_{i}"), c)))
            .collect();
        let sql = format!(
            "SELECT sluice_has_before, sluice_has_after, {} FROM {} WHERE sluice_seq > {} ORDER BY sluice_seq LIMIT {limit}",
            images.join(", "),
            tables.changes,
            self.param(1, ColumnType::Long)
        );
        Statement { sql, params: vec![Some(skip.to_string())] }
    }

    /// The `warehouse_diff` comparison as read-only queries (`sluice plan`): the model's rows
    /// against the kept snapshot, or against an empty one before the first run (every row is a
    /// snapshot read). Nothing is written.
    pub fn plan(&self, model: &ModelConfig, schema: &RowSchema, snapshot_exists: bool) -> PlanQueries {
        let current = self.kept_rows(model, schema);
        let snapshot = if snapshot_exists { StateTables::of(model.name.get_ref()).snapshot } else { format!("({current} LIMIT 0)") };
        PlanQueries { differs: self.differs(schema), keys: key_list(schema), current, snapshot }
    }
}

/// The queries of a `warehouse_diff` plan ([`Dialect::plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanQueries {
    current: String,
    snapshot: String,
    keys: Vec<String>,
    differs: String,
}

impl PlanQueries {
    /// One BIGINT: the model's rows.
    pub fn rows(&self) -> String {
        format!("SELECT CAST(count(*) AS BIGINT) FROM ({}) AS sluice_current", self.current)
    }

    /// One BIGINT: the kept snapshot's rows.
    pub fn tracked(&self) -> String {
        format!("SELECT CAST(count(*) AS BIGINT) FROM {} AS sluice_snapshot", self.snapshot)
    }

    /// The model's rows FULL OUTER JOIN the snapshot on the key, kept where a side is missing or
    /// the row differs: the key columns (named as in the model) and `sluice_kind` = `c`, `u`, `d`.
    fn planned(&self) -> String {
        let (keys, first) = (&self.keys, &self.keys[0]);
        let coalesced = keys.iter().map(|k| format!("coalesce(n.{k}, o.{k}) AS {k}")).collect::<Vec<_>>().join(", ");
        format!(
            "WITH n AS ({}), sluice_planned AS (SELECT {coalesced}, \
             CASE WHEN o.{first} IS NULL THEN 'c' WHEN n.{first} IS NULL THEN 'd' ELSE 'u' END AS sluice_kind \
             FROM n FULL OUTER JOIN {} o ON {} WHERE n.{first} IS NULL OR o.{first} IS NULL OR ({}))",
            self.current,
            self.snapshot,
            key_join(keys),
            self.differs
        )
    }

    /// Rows of (`sluice_kind`, BIGINT count).
    pub fn counts(&self) -> String {
        format!("{} SELECT sluice_kind, CAST(count(*) AS BIGINT) FROM sluice_planned GROUP BY sluice_kind", self.planned())
    }

    /// Up to `limit` key tuples of one kind (`c`, `u`, `d`), in key order.
    pub fn samples(&self, kind: char, limit: usize) -> String {
        let list = self.keys.join(", ");
        format!("{} SELECT {list} FROM sluice_planned WHERE sluice_kind = '{kind}' ORDER BY {list} LIMIT {limit}", self.planned())
    }
}

/// The columns of the model, quoted, as a `DESCRIBE`-able query that reads no row.
pub fn columns_query(model: &ModelConfig) -> String {
    let list: Vec<String> = model.columns.iter().map(|c| ident(c)).collect();
    format!("SELECT {} FROM {} LIMIT 0", list.join(", "), model.relation_sql())
}

/// Quote an identifier (standard SQL double quotes, embedded quotes doubled).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quote a string value (standard SQL single quotes, embedded quotes doubled).
pub fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The schema's columns, quoted, in order.
fn column_list(schema: &RowSchema) -> String {
    schema.columns.iter().map(|c| ident(&c.name)).collect::<Vec<_>>().join(", ")
}

/// The key columns, quoted, in key order.
pub fn key_list(schema: &RowSchema) -> Vec<String> {
    schema.key_columns().map(|c| ident(&c.name)).collect()
}

/// `n.k1 = o.k1 AND n.k2 = o.k2 …`
fn key_join(keys: &[String]) -> String {
    keys.iter().map(|k| format!("n.{k} = o.{k}")).collect::<Vec<_>>().join(" AND ")
}

/// `(c1, c2, …) > (p1, p2, …)` spelled out lexicographically:
/// `c1 > p1 OR (c1 = p1 AND (c2 > p2 OR (c2 = p2 AND …)))`. Columns and parameters are SQL
/// expressions; each parameter appears at most twice, so use numbered placeholders (`$1`).
pub fn tuple_after(columns: &[String], params: &[String]) -> String {
    assert_eq!(columns.len(), params.len(), "one parameter per column");
    let last = columns.len() - 1;
    let mut predicate = format!("{} > {}", columns[last], params[last]);
    for i in (0..last).rev() {
        predicate = format!("{c} > {p} OR ({c} = {p} AND ({predicate}))", c = columns[i], p = params[i]);
    }
    format!("({predicate})")
}

/// A predicate that holds when any key column is NULL.
fn any_null(keys: &[String]) -> String {
    keys.iter().map(|k| format!("{k} IS NULL")).collect::<Vec<_>>().join(" OR ")
}

/// One row of three BIGINTs for `relation`: rows, rows with a NULL key column, and duplicate
/// key rows (each copy beyond the first). One statement, so one consistent view of the model.
pub fn key_check(relation: &str, keys: &[String]) -> String {
    let (nulls, list) = (any_null(keys), keys.join(", "));
    format!(
        "SELECT CAST(count(*) AS BIGINT), CAST(count(*) FILTER (WHERE {nulls}) AS BIGINT), \
         (SELECT CAST(coalesce(sum(n - 1), 0) AS BIGINT) FROM \
          (SELECT count(*) AS n FROM {relation} WHERE NOT ({nulls}) GROUP BY {list} HAVING count(*) > 1) AS sluice_duplicates) \
         FROM {relation}"
    )
}

/// Up to `limit` key tuples with a NULL column.
pub fn null_key_samples(relation: &str, keys: &[String], limit: usize) -> String {
    format!("SELECT {} FROM {relation} WHERE {} LIMIT {limit}", keys.join(", "), any_null(keys))
}

/// Up to `limit` duplicated key tuples, in key order.
pub fn duplicate_key_samples(relation: &str, keys: &[String], limit: usize) -> String {
    let list = keys.join(", ");
    format!("SELECT {list} FROM {relation} WHERE NOT ({}) GROUP BY {list} HAVING count(*) > 1 ORDER BY {list} LIMIT {limit}", any_null(keys))
}

/// One row of five BIGINTs after [`Dialect::build_changes`]: pending rows, kept rows, inserts,
/// updates, deletes.
pub fn change_counts(tables: &StateTables) -> String {
    let StateTables { snapshot, pending, changes } = tables;
    format!(
        "SELECT (SELECT CAST(count(*) AS BIGINT) FROM {pending}), (SELECT CAST(count(*) AS BIGINT) FROM {snapshot}), \
         CAST(count(*) FILTER (WHERE NOT sluice_has_before) AS BIGINT), \
         CAST(count(*) FILTER (WHERE sluice_has_before AND sluice_has_after) AS BIGINT), \
         CAST(count(*) FILTER (WHERE NOT sluice_has_after) AS BIGINT) FROM {changes}"
    )
}

/// One BIGINT: 1 when table `name` exists in `schema` (the standard catalog), else 0.
pub fn table_exists(schema: &str, name: &str) -> String {
    format!(
        "SELECT CAST(count(*) AS BIGINT) FROM information_schema.tables WHERE table_schema = {} AND table_name = {}",
        literal(schema),
        literal(name)
    )
}

/// A PostgreSQL-like dialect for unit tests of statements built from a [`Dialect`].
#[cfg(test)]
pub(crate) fn pg_like() -> Dialect {
    Dialect {
        text_type: "text",
        text_param: |n| format!("${n}::text"),
        cast_type: |ty| match ty {
            ColumnType::Int => "integer".into(),
            ColumnType::Long => "bigint".into(),
            ColumnType::TimestampMicros { .. } => "timestamptz".into(),
            _ => "text".into(),
        },
        reads_text: |ty| matches!(ty, ColumnType::Decimal { .. } | ColumnType::DecimalText),
        row_values: true,
        row_comparison: RowComparison::Md5RowText,
        changes_primary_key: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::Value;


    fn duck_like() -> Dialect {
        Dialect { text_type: "VARCHAR", text_param: |n| format!("${n}"), row_values: false, row_comparison: RowComparison::Columns, changes_primary_key: false, ..pg_like() }
    }

    fn model(detection: &str) -> ModelConfig {
        let text = format!(
            "[kafka]\nbootstrap_servers = \"k:9092\"\ntopic_prefix = \"p\"\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n\
             [[models]]\nname = \"m\"\ntable = \"s.t\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"at\", \"ltv\"]\ndetection = {detection}\n"
        );
        sluice_core::config::Config::parse("t.toml", &text).expect("valid").models.remove(0)
    }

    fn schema() -> RowSchema {
        let column = |name: &str, ty| Column { name: name.into(), ty, nullable: name != "id" };
        RowSchema {
            columns: vec![
                column("id", ColumnType::Long),
                column("at", ColumnType::TimestampMicros { utc: true }),
                column("ltv", ColumnType::Decimal { precision: 10, scale: 2 }),
            ],
            primary_key: vec![0],
        }
    }

    #[test]
    fn tuple_after_is_lexicographic() {
        let columns = ["a".to_string(), "b".to_string(), "c".to_string()];
        let params = ["$1".to_string(), "$2".to_string(), "$3".to_string()];
        assert_eq!(tuple_after(&columns[..1], &params[..1]), "(a > $1)");
        assert_eq!(tuple_after(&columns, &params), "(a > $1 OR (a = $1 AND (b > $2 OR (b = $2 AND (c > $3)))))");
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(ident("weird\"name"), "\"weird\"\"name\"");
        assert_eq!(literal("it's"), "'it''s'");
    }

    #[test]
    fn a_cursor_page_compares_row_values_where_the_dialect_can_and_spells_them_out_elsewhere() {
        let model = model(r#"{ mode = "cursor", cursor_column = "at" }"#);
        let after = [Value::TimestampMicros(0), Value::Long(7)];
        let page = Page { order: PageOrder::Cursor, since: Some(Value::TimestampMicros(-1)), after: Some(after.to_vec()), limit: 50 };
        let pg = pg_like().page(&model, &schema(), &page).unwrap();
        assert_eq!(
            pg.sql,
            "SELECT \"id\", \"at\", CAST(\"ltv\" AS text) FROM s.t \
             WHERE (\"at\", \"id\") > (CAST($1::text || '+00' AS timestamptz), CAST($2::text AS bigint)) \
             AND \"at\" >= CAST($3::text || '+00' AS timestamptz) ORDER BY \"at\", \"id\" LIMIT 50"
        );
        assert_eq!(pg.params, vec![Some("1970-01-01 00:00:00.000000".into()), Some("7".into()), Some("1969-12-31 23:59:59.999999".into())]);
        let duck = duck_like().page(&model, &schema(), &page).unwrap();
        assert_eq!(
            duck.sql,
            "SELECT \"id\", \"at\", CAST(\"ltv\" AS VARCHAR) FROM s.t \
             WHERE (\"at\" > CAST($1 || '+00' AS timestamptz) OR (\"at\" = CAST($1 || '+00' AS timestamptz) AND (\"id\" > CAST($2 AS bigint)))) \
             AND \"at\" >= CAST($3 || '+00' AS timestamptz) ORDER BY \"at\", \"id\" LIMIT 50"
        );
        assert_eq!(duck.params, pg.params);
    }

    #[test]
    fn a_key_page_orders_by_the_key_and_the_first_page_has_no_predicate() {
        let model = model(r#"{ mode = "diff" }"#);
        let by_key = |after: Option<Vec<Value>>| Page { order: PageOrder::Key, since: None, after, limit: 3 };
        let first = duck_like().page(&model, &schema(), &by_key(None)).unwrap();
        assert_eq!(first.sql, "SELECT \"id\", \"at\", CAST(\"ltv\" AS VARCHAR) FROM s.t ORDER BY \"id\" LIMIT 3");
        assert!(first.params.is_empty());
        let next = duck_like().page(&model, &schema(), &by_key(Some(vec![Value::Long(3)]))).unwrap();
        assert_eq!(next.sql, "SELECT \"id\", \"at\", CAST(\"ltv\" AS VARCHAR) FROM s.t WHERE (\"id\" > CAST($1 AS bigint)) ORDER BY \"id\" LIMIT 3");
        let refused = duck_like().page(&model, &schema(), &Page { order: PageOrder::Cursor, ..by_key(None) }).unwrap_err();
        assert!(refused.to_string().contains("cursor reads need cursor mode"), "{refused}");
    }

    #[test]
    fn warehouse_diff_compares_by_hash_or_column_by_column() {
        let (model, schema) = (model(r#"{ mode = "warehouse_diff" }"#), schema());
        let tables = StateTables::of("m");
        assert_eq!(tables.changes, "sluice_state.\"m_changes\"");
        assert_eq!(
            pg_like().build_pending(&model, &schema, &tables),
            "CREATE TABLE IF NOT EXISTS sluice_state.\"m_snapshot\" AS SELECT \"id\", \"at\", \"ltv\", md5(ROW(\"id\", \"at\", \"ltv\")::text) AS sluice_hash FROM s.t LIMIT 0; \
             DROP TABLE IF EXISTS sluice_state.\"m_pending\"; DROP TABLE IF EXISTS sluice_state.\"m_changes\"; \
             CREATE TABLE sluice_state.\"m_pending\" AS SELECT \"id\", \"at\", \"ltv\", md5(ROW(\"id\", \"at\", \"ltv\")::text) AS sluice_hash FROM s.t"
        );
        let pg = pg_like().build_changes(&schema, &tables);
        assert!(pg.ends_with("WHERE n.\"id\" IS NULL OR o.\"id\" IS NULL OR (n.sluice_hash <> o.sluice_hash); ALTER TABLE sluice_state.\"m_changes\" ADD PRIMARY KEY (sluice_seq)"), "{pg}");
        assert!(pg.contains("row_number() OVER (ORDER BY coalesce(n.\"id\", o.\"id\")) AS sluice_seq"), "{pg}");
        assert!(pg.contains("o.\"id\" AS o_0, o.\"at\" AS o_1, o.\"ltv\" AS o_2, n.\"id\" AS n_0, n.\"at\" AS n_1, n.\"ltv\" AS n_2 FROM sluice_state.\"m_pending\" n FULL OUTER JOIN sluice_state.\"m_snapshot\" o ON n.\"id\" = o.\"id\""), "{pg}");
        let duck = duck_like().build_changes(&schema, &tables);
        assert!(
            duck.ends_with("OR (n.\"id\" IS DISTINCT FROM o.\"id\" OR n.\"at\" IS DISTINCT FROM o.\"at\" OR n.\"ltv\" IS DISTINCT FROM o.\"ltv\")"),
            "{duck}"
        );
        let page = duck_like().changes_page(&schema, &tables, 6, 3);
        assert_eq!(
            page.sql,
            "SELECT sluice_has_before, sluice_has_after, o_0, o_1, CAST(o_2 AS VARCHAR), n_0, n_1, CAST(n_2 AS VARCHAR) \
             FROM sluice_state.\"m_changes\" WHERE sluice_seq > CAST($1 AS bigint) ORDER BY sluice_seq LIMIT 3"
        );
        assert_eq!(page.params, vec![Some("6".into())]);
    }

    #[test]
    fn a_plan_before_the_first_run_compares_with_an_empty_snapshot() {
        let (model, schema) = (model(r#"{ mode = "warehouse_diff" }"#), schema());
        let plan = duck_like().plan(&model, &schema, false);
        assert_eq!(plan.tracked(), "SELECT CAST(count(*) AS BIGINT) FROM (SELECT \"id\", \"at\", \"ltv\" FROM s.t LIMIT 0) AS sluice_snapshot");
        let plan = duck_like().plan(&model, &schema, true);
        assert_eq!(plan.tracked(), "SELECT CAST(count(*) AS BIGINT) FROM sluice_state.\"m_snapshot\" AS sluice_snapshot");
        assert!(plan.samples('u', 5).ends_with("SELECT \"id\" FROM sluice_planned WHERE sluice_kind = 'u' ORDER BY \"id\" LIMIT 5"), "{}", plan.samples('u', 5));
    }
}
