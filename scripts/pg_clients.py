"""Asks Duet's PostgreSQL port what BI tools ask, with psycopg (a client Duet did not write).

Usage: pg_clients.py PORT

Runs, over psycopg 3 (the extended query protocol with server-side parameters):
- the schema queries Grafana's PostgreSQL data source sends to list tables and columns;
- a Grafana time-series panel's query, its macros expanded as Grafana expands them
  ($__timeGroupAlias(bucket, 1h), $__timeFilter(bucket));
- a Grafana table panel's query ($__time(bucket));
- a parameterized query (timestamps and text bound as parameters);
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
