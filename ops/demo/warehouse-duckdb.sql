-- Demo warehouse on DuckDB (the quickstart's default): the same customers table as
-- warehouse.sql, as a dbt-duckdb model would leave it. Loaded by ops/quickstart.sh with
-- `sluice warehouse exec --create --file ops/demo/warehouse-duckdb.sql`.
CREATE OR REPLACE TABLE customers (
    id             BIGINT PRIMARY KEY,
    email          VARCHAR NOT NULL,
    full_name      VARCHAR NOT NULL,
    plan           VARCHAR NOT NULL,
    lifetime_value DECIMAL(12, 2) NOT NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO customers (id, email, full_name, plan, lifetime_value)
SELECT i,
       'customer' || i || '@example.com',
       'Customer ' || i,
       ['free', 'starter', 'pro'][1 + i % 3],
       round(i * 37.5, 2)
FROM range(1, 21) AS t(i);
