-- Demo warehouse: a customers table as a dbt model would leave it. Used by
-- ops/quickstart.sh and by docker-compose (mounted into the warehouse's initdb).
DROP TABLE IF EXISTS public.customers;
CREATE TABLE public.customers (
    id             bigint PRIMARY KEY,
    email          text NOT NULL,
    full_name      text NOT NULL,
    plan           text NOT NULL,
    lifetime_value numeric(12, 2) NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
INSERT INTO public.customers (id, email, full_name, plan, lifetime_value)
SELECT i,
       format('customer%s@example.com', i),
       format('Customer %s', i),
       (ARRAY['free', 'starter', 'pro'])[1 + i % 3],
       round((i * 37.5)::numeric, 2)
FROM generate_series(1, 20) AS i;
