//! The conformance suite on PostgreSQL: the shared server of `ops/services.sh`, one uniquely named
//! table per test.

use std::time::Duration;

use sluice_core::{ColumnType, Value};
use sluice_integration_tests::{postgres_url, require_postgres};

use super::{Absent, Backend, Types};

/// The shared PostgreSQL server.
pub(crate) struct Postgres {
    client: tokio_postgres::Client,
}

impl Backend for Postgres {
    async fn create() -> Self {
        // The config names the URL by reference (secrets are never inline).
        std::env::set_var("SLUICE_IT_WAREHOUSE_URL", postgres_url());
        Postgres { client: require_postgres().await }
    }

    fn warehouse_section(&self) -> String {
        "[warehouse]\nkind = \"postgres\"\nurl = { env = \"SLUICE_IT_WAREHOUSE_URL\" }".into()
    }

    async fn exec(&self, sql: &str) {
        self.client.batch_execute(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn text_rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let rows = self.client.query(sql, &[]).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
        rows.iter().map(|row| (0..row.len()).map(|i| row.get::<_, Option<String>>(i)).collect()).collect()
    }

    fn types() -> Types {
        use Value::*;
        Types {
            setup: r#"CREATE TABLE {table} (id bigint PRIMARY KEY, small int2, regular int4, amount numeric(12,3), free numeric, name text,
                      flag boolean, day date, at_local timestamp, at_utc timestamptz, doc json, docb jsonb, uid uuid, raw bytea, tags text[]);
                      INSERT INTO {table} VALUES
                      (1, 7, 70000, 1234.5, 3.14159265358979323846264338327950288419716939937510, 'Zoë ✓ 日本 — "quoted"', true, '2024-02-29',
                       '2024-02-29 12:34:56.789012', '2024-02-29 12:34:56.789012+00', '{"a": [1, "x"]}', '{"b": null}',
                       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\x00ff10', '{x}'),
                      (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
                      (3, -32768, -2147483648, -98765.432, -0.5, '', false, '1969-12-31', '1969-12-31 23:59:59.999999', '1970-01-01 00:00:00+00',
                       '[]', '{}', '00000000-0000-0000-0000-000000000000', '', '{}'),
                      (4, 32767, 2147483647, -0.001, 0, 'plain', true, '2000-01-01', '2000-01-01 00:00:00', '2000-01-01 00:00:00+00', 'null', '1',
                       'ffffffff-ffff-ffff-ffff-ffffffffffff', '\xff', NULL)"#,
            columns: &["id", "small", "regular", "amount", "free", "name", "flag", "day", "at_local", "at_utc", "doc", "docb", "uid", "raw"],
            types: vec![
                ColumnType::Long,
                ColumnType::Int,
                ColumnType::Int,
                ColumnType::Decimal { precision: 12, scale: 3 },
                ColumnType::DecimalText,
                ColumnType::String,
                ColumnType::Boolean,
                ColumnType::Date,
                ColumnType::TimestampMicros { utc: false },
                ColumnType::TimestampMicros { utc: true },
                ColumnType::Json,
                ColumnType::Json,
                ColumnType::Uuid,
                ColumnType::Bytes,
            ],
            rows: vec![
                vec![
                    Long(1),
                    Int(7),
                    Int(70000),
                    DecimalText("1234.500".into()),
                    DecimalText("3.14159265358979323846264338327950288419716939937510".into()),
                    String("Zoë ✓ 日本 — \"quoted\"".into()),
                    Boolean(true),
                    Date(19782),
                    TimestampMicros(1_709_210_096_789_012),
                    TimestampMicros(1_709_210_096_789_012),
                    Json(r#"{"a":[1,"x"]}"#.into()),
                    Json(r#"{"b":null}"#.into()),
                    Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                    Bytes(vec![0x00, 0xff, 0x10]),
                ],
                std::iter::once(Long(2)).chain(std::iter::repeat_n(Null, 13)).collect(),
                vec![
                    Long(3),
                    Int(-32768),
                    Int(-2147483648),
                    DecimalText("-98765.432".into()),
                    DecimalText("-0.5".into()),
                    String(std::string::String::new()),
                    Boolean(false),
                    Date(-1),
                    TimestampMicros(-1),
                    TimestampMicros(0),
                    Json("[]".into()),
                    Json("{}".into()),
                    Uuid("00000000-0000-0000-0000-000000000000".into()),
                    Bytes(Vec::new()),
                ],
                vec![
                    Long(4),
                    Int(32767),
                    Int(2147483647),
                    DecimalText("-0.001".into()),
                    DecimalText("0".into()),
                    String("plain".into()),
                    Boolean(true),
                    Date(10957),
                    TimestampMicros(946_684_800_000_000),
                    TimestampMicros(946_684_800_000_000),
                    Json("null".into()),
                    Json("1".into()),
                    Uuid("ffffffff-ffff-ffff-ffff-ffffffffffff".into()),
                    Bytes(vec![0xff]),
                ],
            ],
            refusal: "PostgreSQL type _text, which sluice does not map; cast it in a `query` model (e.g. tags::text)",
        }
    }

    fn absent() -> Absent {
        // Port 1 on the loopback: nothing listens, the connection is refused at once.
        std::env::set_var("SLUICE_IT_ABSENT_WAREHOUSE_URL", "postgres://sluice:sluice@127.0.0.1:1/sluice");
        Absent {
            section: "[warehouse]\nkind = \"postgres\"\nurl = { env = \"SLUICE_IT_ABSENT_WAREHOUSE_URL\" }".into(),
            says: "error connecting to server",
            must_not_exist: None,
        }
    }

    const WRITES_PER_TRANSACTION: usize = 1;
    const WRITER_PAUSE: Duration = Duration::from_millis(5);
    const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(120);
}

conformance_tests!(Postgres);
