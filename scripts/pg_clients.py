"""Asks Duet's PostgreSQL port what BI tools ask, with psycopg (a client Duet did not write).

Usage: pg_clients.py PORT

Runs, over psycopg 3 (the extended query protocol with server-side parameters):
- the schema queries Grafana's PostgreSQL data source sends to list tables and columns;
- a Grafana time-series panel's query, its macros expanded as Grafana expands them
  ($__timeGroupAlias(bucket, 1h), $__timeFilter(bucket));
- a Grafana table panel's query ($__time(bucket));
- a parameterized query (timestamps and text bound as parameters);
- the statements Metabase sends when it connects and syncs the tables;
and prints {name: rows} as JSON (values as text), for the Rust test to compare.
"""

import datetime
import json
import sys

import psycopg

GRAFANA_TABLES = """SELECT
    CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      THEN quote_ident(table_name)
      ELSE quote_ident(table_schema) || '.' || quote_ident(table_name)
    END AS "table"
    FROM information_schema.tables
    WHERE quote_ident(table_schema) NOT IN ('information_schema',
                             'pg_catalog',
                             '_timescaledb_cache',
                             '_timescaledb_catalog',
                             '_timescaledb_internal',
                             '_timescaledb_config',
                             'timescaledb_information',
                             'timescaledb_experimental')
    ORDER BY CASE WHEN
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          ) THEN 0 ELSE 1 END, 1"""

GRAFANA_COLUMNS = """SELECT quote_ident(column_name) AS "column", data_type AS "type"
    FROM information_schema.columns
    WHERE
      CASE WHEN array_length(parse_ident('public.gmv'),1) = 2
        THEN quote_ident(table_schema) = (parse_ident('public.gmv'))[1]
          AND quote_ident(table_name) = (parse_ident('public.gmv'))[2]
        ELSE quote_ident(table_name) = 'public.gmv'
          AND
          quote_ident(table_schema) IN (
          SELECT
            CASE WHEN trim(s[i]) = '"$user"' THEN user ELSE trim(s[i]) END
          FROM
            generate_series(
              array_lower(string_to_array(current_setting('search_path'),','),1),
              array_upper(string_to_array(current_setting('search_path'),','),1)
            ) as i,
            string_to_array(current_setting('search_path'),',') s
          )
      END"""

# $__timeGroupAlias(bucket, 1h) and $__timeFilter(bucket), as Grafana expands them
GRAFANA_TIME_SERIES = """SELECT
  floor(extract(epoch from bucket)/3600)*3600 AS "time",
  sum(gmv) AS "gmv",
  sum(n) AS "orders"
FROM gmv
WHERE
  bucket BETWEEN '1970-01-01T01:00:00Z' AND '1970-01-01T01:59:59.999Z'
GROUP BY 1
ORDER BY 1"""

# $__time(bucket) in a table panel
GRAFANA_TABLE = """SELECT
  bucket AS "time",
  city AS metric,
  n AS value
FROM gmv
WHERE
  bucket BETWEEN '1970-01-01T01:00:00Z' AND '1970-01-01T01:01:59.999Z'
ORDER BY 1, 2"""

PARAMETERIZED = """SELECT city, sum(users) AS buyers_summed_over_minutes, distinct_count_merge(users_state) AS buyers
FROM buyers
WHERE bucket >= %s AND bucket < %s AND city = %s
GROUP BY city"""


# What Metabase 0.55 sends when it connects and syncs a PostgreSQL database's tables, in
# order (its JDBC session setup, schema list, privileges and table list), as the
# datafusion-postgres project recorded them from a Metabase session (its tests/metabase.rs)
METABASE = [
    "SET extra_float_digits = 2",
    "SET application_name = 'Metabase v0.55.1 [f8f63fdf-d8f8-4573-86ea-4fe4a9548041]'",
    "SHOW TRANSACTION ISOLATION LEVEL",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    "SELECT nspname AS \"TABLE_SCHEM\", current_database() AS \"TABLE_CATALOG\" FROM pg_catalog.pg_namespace  WHERE nspname <> 'pg_toast' AND (nspname !~ '^pg_temp_'  OR nspname = (pg_catalog.current_schemas(true))[1]) AND (nspname !~ '^pg_toast_temp_'  OR nspname = replace((pg_catalog.current_schemas(true))[1], 'pg_temp_', 'pg_toast_temp_'))  ORDER BY \"TABLE_SCHEM\"",
    "with table_privileges as (\n         select\n           NULL as role,\n           t.schemaname as schema,\n           t.objectname as table,\n           pg_catalog.has_any_column_privilege(current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'update') as update,\n           pg_catalog.has_any_column_privilege(current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'select') as select,\n           pg_catalog.has_any_column_privilege(current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'insert') as insert,\n           pg_catalog.has_table_privilege(     current_user, '\"' || replace(t.schemaname, '\"', '\"\"') || '\"' || '.' || '\"' || replace(t.objectname, '\"', '\"\"') || '\"',  'delete') as delete\n         from (\n           select schemaname, tablename as objectname from pg_catalog.pg_tables\n           union\n           select schemaname, viewname as objectname from pg_catalog.pg_views\n           union\n           select schemaname, matviewname as objectname from pg_catalog.pg_matviews\n         ) t\n         where t.schemaname !~ '^pg_'\n           and t.schemaname <> 'information_schema'\n           and pg_catalog.has_schema_privilege(current_user, t.schemaname, 'usage')\n        )\n        select t.*\n        from table_privileges t",
    "SELECT \"n\".\"nspname\" AS \"schema\", \"c\".\"relname\" AS \"name\", CASE \"c\".\"relkind\" WHEN 'r' THEN 'TABLE' WHEN 'p' THEN 'PARTITIONED TABLE' WHEN 'v' THEN 'VIEW' WHEN 'f' THEN 'FOREIGN TABLE' WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE NULL END AS \"type\", \"d\".\"description\" AS \"description\", \"stat\".\"n_live_tup\" AS \"estimated_row_count\" FROM \"pg_catalog\".\"pg_class\" AS \"c\" INNER JOIN \"pg_catalog\".\"pg_namespace\" AS \"n\" ON \"c\".\"relnamespace\" = \"n\".\"oid\" LEFT JOIN \"pg_catalog\".\"pg_description\" AS \"d\" ON (\"c\".\"oid\" = \"d\".\"objoid\") AND (\"d\".\"objsubid\" = '0') AND (\"d\".\"classoid\" = 'pg_class'::regclass) LEFT JOIN \"pg_stat_user_tables\" AS \"stat\" ON (\"n\".\"nspname\" = \"stat\".\"schemaname\") AND (\"c\".\"relname\" = \"stat\".\"relname\") WHERE (\"c\".\"relnamespace\" = \"n\".\"oid\") AND (\"n\".\"nspname\" !~ '^pg_') AND (\"n\".\"nspname\" <> 'information_schema') AND c.relkind in ('r', 'p', 'v', 'f', 'm') AND (\"n\".\"nspname\" IN ('public')) ORDER BY \"type\" ASC, \"schema\" ASC, \"name\" ASC",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL READ UNCOMMITTED",
    "show timezone"
]


def rows(cur):
    return [[None if v is None else str(v) for v in r] for r in cur.fetchall()]


def main():
    port = int(sys.argv[1])
    out = {}
    with psycopg.connect(
        host="127.0.0.1", port=port, dbname="duet", user="duet", connect_timeout=10
    ) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            for name, sql in [
                ("grafana_tables", GRAFANA_TABLES),
                ("grafana_columns", GRAFANA_COLUMNS),
                ("grafana_time_series", GRAFANA_TIME_SERIES),
                ("grafana_table", GRAFANA_TABLE),
            ]:
                cur.execute(sql)
                out[name] = rows(cur)
            utc = datetime.timezone.utc
            cur.execute(
                PARAMETERIZED,
                (
                    datetime.datetime(1970, 1, 1, 1, tzinfo=utc),
                    datetime.datetime(1970, 1, 1, 2, tzinfo=utc),
                    "Beijing",
                ),
            )
            out["parameterized"] = rows(cur)
            # Metabase's session: every statement answers; the last SELECT lists the tables
            out["metabase"] = []
            for sql in METABASE:
                cur.execute(sql)
                out["metabase"].append(rows(cur) if cur.description else None)
            # a refused statement raises with its SQLSTATE, and the connection goes on
            try:
                cur.execute("DELETE FROM gmv")
                out["refused"] = None
            except psycopg.Error as e:
                out["refused"] = e.sqlstate
            cur.execute("SELECT count(*) FROM gmv")
            out["after_refusal"] = rows(cur)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
