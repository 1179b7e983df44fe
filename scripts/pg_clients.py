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
import re
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

# Metabase's field sync (describe-fields), as Metabase 0.62 sends it to PostgreSQL, with its
# bound parameters ($1 = 'ALWAYS', $2 = $3 = 'public')
METABASE_FIELDS = (
    'SELECT "c"."column_name" AS "name", CASE WHEN "c"."udt_schema" IN (\'public\', \'pg_catalog\') THEN FORMAT(\'%s\', "c"."udt_name") ELSE FORMAT(\'"%s"."%s"\', "c"."udt_schema", "c"."udt_name") END AS "database-type", "c"."ordinal_position" - 1 AS "database-position", "c"."table_schema" AS "table-schema", "c"."table_name" AS "table-name", "pk"."column_name" IS NOT NULL AS "pk?", COL_DESCRIPTION(CAST(CAST(FORMAT(\'%I.%I\', CAST("c"."table_schema" AS TEXT), CAST("c"."table_name" AS TEXT)) AS REGCLASS) AS OID), "c"."ordinal_position") AS "field-comment", (("column_default" IS NULL) OR (LOWER("column_default") = \'null\')) AND ("is_nullable" = \'NO\') AND NOT ((("column_default" IS NOT NULL) AND ("column_default" LIKE \'%nextval(%\')) OR ("is_identity" <> \'NO\')) AS "database-required", "column_default" AS "database-default", (("column_default" IS NOT NULL) AND ("column_default" LIKE \'%nextval(%\')) OR ("is_identity" <> \'NO\') AS "database-is-auto-increment", "is_generated" = $1 AS "database-is-generated", "is_nullable" = \'YES\' AS "database-is-nullable" '
    'FROM "information_schema"."columns" AS "c" LEFT JOIN (SELECT "tc"."table_schema", "tc"."table_name", "kc"."column_name" FROM "information_schema"."table_constraints" AS "tc" INNER JOIN "information_schema"."key_column_usage" AS "kc" ON ("tc"."constraint_name" = "kc"."constraint_name") AND ("tc"."table_schema" = "kc"."table_schema") AND ("tc"."table_name" = "kc"."table_name") WHERE "tc"."constraint_type" = \'PRIMARY KEY\') AS "pk" ON ("c"."table_schema" = "pk"."table_schema") AND ("c"."table_name" = "pk"."table_name") AND ("c"."column_name" = "pk"."column_name") '
    'WHERE c.table_schema !~ \'^information_schema|catalog_history|pg_\' AND ("c"."table_schema" IN ($2)) '
    'UNION ALL SELECT "pa"."attname" AS "name", CASE WHEN "ptn"."nspname" IN (\'public\', \'pg_catalog\') THEN FORMAT(\'%s\', "pt"."typname") ELSE FORMAT(\'"%s"."%s"\', "ptn"."nspname", "pt"."typname") END AS "database-type", "pa"."attnum" - 1 AS "database-position", "pn"."nspname" AS "table-schema", "pc"."relname" AS "table-name", FALSE AS "pk?", NULL AS "field-comment", FALSE AS "database-required", NULL AS "database-default", FALSE AS "database-is-auto-increment", FALSE AS "database-is-generated", FALSE AS "database-is-nullable" '
    'FROM "pg_catalog"."pg_class" AS "pc" INNER JOIN "pg_catalog"."pg_namespace" AS "pn" ON "pn"."oid" = "pc"."relnamespace" INNER JOIN "pg_catalog"."pg_attribute" AS "pa" ON "pa"."attrelid" = "pc"."oid" INNER JOIN "pg_catalog"."pg_type" AS "pt" ON "pt"."oid" = "pa"."atttypid" INNER JOIN "pg_catalog"."pg_namespace" AS "ptn" ON "ptn"."oid" = "pt"."typnamespace" '
    'WHERE ("pc"."relkind" = \'m\') AND ("pa"."attnum" >= 1) AND ("pn"."nspname" IN ($3)) ORDER BY "table-schema" ASC, "table-name" ASC, "database-position" ASC'
)


# The rest of Metabase 0.62's sync of a PostgreSQL database, in order, with the parameters it
# binds (`{oid}` is the table's pg_class oid, which Metabase has read before): its table list,
# enum types, pgjdbc's column and primary-key queries, its foreign keys, the fingerprint
# samples of a table's fields and a question's count.
METABASE_SYNC = [
    ("SELECT 1", ()),
    ("select current_catalog", ()),
    (
        'SELECT "n"."nspname" AS "schema", "c"."relname" AS "name", CASE "c"."relkind" WHEN \'r\' THEN \'TABLE\' WHEN \'p\' THEN \'PARTITIONED TABLE\' WHEN \'v\' THEN \'VIEW\' WHEN \'f\' THEN \'FOREIGN TABLE\' WHEN \'m\' THEN \'MATERIALIZED VIEW\' ELSE NULL END AS "type", "d"."description" AS "description", NULLIF("stat"."n_live_tup", $1) AS "estimated_row_count" FROM "pg_catalog"."pg_class" AS "c" INNER JOIN "pg_catalog"."pg_namespace" AS "n" ON "c"."relnamespace" = "n"."oid" LEFT JOIN "pg_catalog"."pg_description" AS "d" ON ("c"."oid" = "d"."objoid") AND ("d"."objsubid" = $2) AND ("d"."classoid" = \'pg_class\'::regclass) LEFT JOIN "pg_stat_user_tables" AS "stat" ON ("n"."nspname" = "stat"."schemaname") AND ("c"."relname" = "stat"."relname") WHERE ("c"."relnamespace" = "n"."oid") AND ("n"."nspname" !~ $3) AND ("n"."nspname" <> $4) AND c.relkind in (\'r\', \'p\', \'v\', \'f\', \'m\') AND ("n"."nspname" IN ($5)) ORDER BY "type" ASC, "schema" ASC, "name" ASC',
        (0, 0, "^pg_", "information_schema", "public"),
    ),
    (
        "SELECT nspname, typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid IN (SELECT DISTINCT enumtypid FROM pg_enum e)",
        (),
    ),
    (METABASE_FIELDS, ("ALWAYS", "public", "public")),
    (
        "SELECT * FROM (SELECT current_database() AS current_database, n.nspname,c.relname,a.attname,a.atttypid,a.attnotnull  OR (t.typtype = 'd' AND t.typnotnull) AS attnotnull,a.atttypmod,a.attlen,t.typtypmod,row_number() OVER (PARTITION BY a.attrelid ORDER BY a.attnum) AS attnum, nullif(a.attidentity, '') as attidentity,nullif(a.attgenerated, '') as attgenerated,pg_catalog.pg_get_expr(def.adbin, def.adrelid) AS adsrc,dsc.description,t.typbasetype,t.typtype  FROM pg_catalog.pg_namespace n  JOIN pg_catalog.pg_class c ON (c.relnamespace = n.oid)  JOIN pg_catalog.pg_attribute a ON (a.attrelid=c.oid)  JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid)  LEFT JOIN pg_catalog.pg_attrdef def ON (a.attrelid=def.adrelid AND a.attnum = def.adnum)  LEFT JOIN pg_catalog.pg_description dsc ON (c.oid=dsc.objoid AND a.attnum = dsc.objsubid)  LEFT JOIN pg_catalog.pg_class dc ON (dc.oid=dsc.classoid AND dc.relname='pg_class')  LEFT JOIN pg_catalog.pg_namespace dn ON (dc.relnamespace=dn.oid AND dn.nspname='pg_catalog')  WHERE c.relkind in ('r','p','v','f','m') and a.attnum > 0 AND NOT a.attisdropped  AND n.nspname LIKE $1 AND c.relname LIKE $2) c WHERE true  ORDER BY nspname,c.relname,attnum",
        ("public", "gmv"),
    ),
    (
        'SELECT        result.TABLE_CAT AS "TABLE_CAT",        result.TABLE_SCHEM AS "TABLE_SCHEM",        result.TABLE_NAME AS "TABLE_NAME",        result.COLUMN_NAME AS "COLUMN_NAME",        result.KEY_SEQ AS "KEY_SEQ",        result.PK_NAME AS "PK_NAME"FROM      (SELECT current_database() AS TABLE_CAT, n.nspname AS TABLE_SCHEM,   ct.relname AS TABLE_NAME, a.attname AS COLUMN_NAME,   (information_schema._pg_expandarray(i.indkey)).n AS KEY_SEQ, ci.relname AS PK_NAME,   information_schema._pg_expandarray(i.indkey) AS KEYS, a.attnum AS A_ATTNUM, i.indnkeyatts as KEY_COUNT FROM pg_catalog.pg_class ct   JOIN pg_catalog.pg_attribute a ON (ct.oid = a.attrelid)   JOIN pg_catalog.pg_namespace n ON (ct.relnamespace = n.oid)   JOIN pg_catalog.pg_index i ON ( a.attrelid = i.indrelid)   JOIN pg_catalog.pg_class ci ON (ci.oid = i.indexrelid) WHERE true  AND n.nspname = $1 AND ct.relname = $2 AND i.indisprimary  ) result where  result.A_ATTNUM = (result.KEYS).x AND result.KEY_SEQ <= KEY_COUNT  ORDER BY result.table_name, result.pk_name, result.key_seq',
        ("public", "gmv"),
    ),
    (
        'SELECT "fk_ns"."nspname" AS "fk-table-schema", "fk_table"."relname" AS "fk-table-name", "fk_column"."attname" AS "fk-column-name", "pk_ns"."nspname" AS "pk-table-schema", "pk_table"."relname" AS "pk-table-name", "pk_column"."attname" AS "pk-column-name" FROM "pg_constraint" AS "c" INNER JOIN "pg_class" AS "fk_table" ON "c"."conrelid" = "fk_table"."oid" INNER JOIN "pg_namespace" AS "fk_ns" ON "c"."connamespace" = "fk_ns"."oid" INNER JOIN "pg_attribute" AS "fk_column" ON "c"."conrelid" = "fk_column"."attrelid" INNER JOIN "pg_class" AS "pk_table" ON "c"."confrelid" = "pk_table"."oid" INNER JOIN "pg_namespace" AS "pk_ns" ON "pk_table"."relnamespace" = "pk_ns"."oid" INNER JOIN "pg_attribute" AS "pk_column" ON "c"."confrelid" = "pk_column"."attrelid" WHERE fk_ns.nspname !~ \'^information_schema|catalog_history|pg_\' AND ("c"."contype" = \'f\'::char) AND ("fk_column"."attnum" = ANY(c.conkey)) AND ("pk_column"."attnum" = ANY(c.confkey)) AND ("fk_ns"."nspname" IN ($1)) ORDER BY "fk-table-schema" ASC, "fk-table-name" ASC',
        ("public",),
    ),
    (
        'SELECT SUBSTRING("public"."gmv"."city", 1, 1234) AS "substring4476", SUBSTRING("public"."gmv"."_source", 1, 1234) AS "substring4477" FROM "public"."gmv" LIMIT 10000',
        (),
    ),
    (
        'SELECT "public"."gmv"."bucket" AS "bucket", "public"."gmv"."gmv" AS "gmv", "public"."gmv"."n" AS "n" FROM "public"."gmv" LIMIT 10000',
        (),
    ),
    (
        "SELECT c.oid, a.attnum, a.attname, c.relname, n.nspname, a.attnotnull OR (t.typtype = 'd' AND t.typnotnull), a.attidentity != '' OR pg_catalog.pg_get_expr(d.adbin, d.adrelid) LIKE '%nextval(%' FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON (c.relnamespace = n.oid) JOIN pg_catalog.pg_attribute a ON (c.oid = a.attrelid) JOIN pg_catalog.pg_type t ON (a.atttypid = t.oid) LEFT JOIN pg_catalog.pg_attrdef d ON (d.adrelid = a.attrelid AND d.adnum = a.attnum) JOIN (SELECT {oid} AS oid , 2 AS attnum UNION ALL SELECT {oid}, 3 UNION ALL SELECT {oid}, 4) vals ON (c.oid = vals.oid AND a.attnum = vals.attnum) where c.oid in ({oid})",
        (),
    ),
    ('SELECT COUNT(*) AS "count" FROM "public"."gmv"', ()),
]

def psycopg_params(sql):
    """A statement written with $1, $2… as psycopg takes it: %s placeholders, % doubled."""
    return re.sub(r"\$\d+", "%s", sql.replace("%", "%%"))



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
            # Metabase 0.62's sync: every statement answers
            cur.execute(
                "SELECT c.oid FROM pg_catalog.pg_class c WHERE c.relname = 'gmv'"
            )
            oid = cur.fetchone()[0]
            out["metabase_sync"] = []
            for sql, params in METABASE_SYNC:
                sql = sql.replace("{oid}", str(oid))
                cur.execute(psycopg_params(sql) if params else sql, params or None)
                out["metabase_sync"].append(rows(cur))
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
