//! SQL text shared by the warehouses: identifier quoting, keyset predicates and the key-health
//! query. Written in the SQL subset PostgreSQL, DuckDB, Snowflake, BigQuery and Redshift all
//! accept (no row-value comparisons, which several of them lack), so a new warehouse reuses it
//! instead of re-deriving the subtle parts.

/// Quote an identifier (standard SQL double quotes, embedded quotes doubled).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
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
pub fn any_null(keys: &[String]) -> String {
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

/// Up to `limit` duplicated key tuples.
pub fn duplicate_key_samples(relation: &str, keys: &[String], limit: usize) -> String {
    let list = keys.join(", ");
    format!("SELECT {list} FROM {relation} WHERE NOT ({}) GROUP BY {list} HAVING count(*) > 1 ORDER BY {list} LIMIT {limit}", any_null(keys))
}

/// The `warehouse_diff` comparison as a read-only query (for `sluice plan`): the model's rows
/// (`current`, a query naming every key column) FULL OUTER JOIN the `snapshot` relation on the
/// key, kept where a side is missing or `differs` (a predicate over aliases `n` and `o`) holds.
/// Yields the key columns (named as in the model) and `sluice_kind` = `c`, `u` or `d`.
fn planned(current: &str, snapshot: &str, keys: &[String], differs: &str) -> String {
    let first = &keys[0];
    let join = keys.iter().map(|k| format!("n.{k} = o.{k}")).collect::<Vec<_>>().join(" AND ");
    let coalesced = keys.iter().map(|k| format!("coalesce(n.{k}, o.{k}) AS {k}")).collect::<Vec<_>>().join(", ");
    format!(
        "WITH n AS ({current}), sluice_planned AS (SELECT {coalesced}, \
         CASE WHEN o.{first} IS NULL THEN 'c' WHEN n.{first} IS NULL THEN 'd' ELSE 'u' END AS sluice_kind \
         FROM n FULL OUTER JOIN {snapshot} o ON {join} WHERE n.{first} IS NULL OR o.{first} IS NULL OR ({differs}))"
    )
}

/// Rows of (`sluice_kind`, BIGINT count) of [`planned`].
pub fn planned_counts(current: &str, snapshot: &str, keys: &[String], differs: &str) -> String {
    format!("{} SELECT sluice_kind, CAST(count(*) AS BIGINT) FROM sluice_planned GROUP BY sluice_kind", planned(current, snapshot, keys, differs))
}

/// Up to `limit` key tuples of one kind (`c`, `u`, `d`) of [`planned`], in key order.
pub fn planned_samples(current: &str, snapshot: &str, keys: &[String], differs: &str, kind: char, limit: usize) -> String {
    let list = keys.join(", ");
    format!(
        "{} SELECT {list} FROM sluice_planned WHERE sluice_kind = '{kind}' ORDER BY {list} LIMIT {limit}",
        planned(current, snapshot, keys, differs)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_after_is_lexicographic() {
        let columns = ["a".to_string(), "b".to_string(), "c".to_string()];
        let params = ["$1".to_string(), "$2".to_string(), "$3".to_string()];
        assert_eq!(tuple_after(&columns[..1], &params[..1]), "(a > $1)");
        assert_eq!(tuple_after(&columns, &params), "(a > $1 OR (a = $1 AND (b > $2 OR (b = $2 AND (c > $3)))))");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("weird\"name"), "\"weird\"\"name\"");
    }
}
