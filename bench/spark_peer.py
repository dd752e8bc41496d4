"""The peer a user would pick instead of the streamer: a PySpark Structured
Streaming job over the same folder, written as its documentation suggests:
`readStream.csv` with the contract's explicit schema, a deduplication on
(user_id, event_time) per micro-batch, and `foreachBatch` staging the batch
into PostgreSQL by JDBC and upserting it into the same indexed `events`
table, recording its files and the commit time in the same transaction.

Run by bench.py (which installs pyspark, Java and the JDBC driver first):

    python3 bench/spark_peer.py DATA_DIR CHECKPOINT_DIR DATABASE_URL JDBC_JAR once|stream [MAX_FILES]

`once` drains the folder (trigger availableNow) and exits; `stream` polls it
until SIGTERM. Prints one JSON line per micro-batch on stdout.
"""

import json
import signal
import sys
import time
from urllib.parse import urlparse

import psycopg
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (DecimalType, IntegerType, StringType, StructField, StructType, TimestampType)

SCHEMA = StructType([
    StructField("user_id", IntegerType(), False),
    StructField("user_name", StringType(), False),
    StructField("user_email", StringType(), False),
    StructField("event_type", StringType(), False),
    StructField("product_id", IntegerType(), False),
    StructField("product_name", StringType(), False),
    StructField("product_category", StringType(), False),
    StructField("product_price", DecimalType(10, 2), False),
    StructField("event_time", TimestampType(), False),
])
COLUMNS = [f.name for f in SCHEMA.fields]

UPSERT = f"""
INSERT INTO events ({", ".join(COLUMNS)})
SELECT {", ".join(COLUMNS)} FROM spark_stage
ON CONFLICT (user_id, event_time) DO UPDATE SET
  {", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS if c not in ("user_id", "event_time"))}
"""


def main():
    data, checkpoint, url, jar, mode = sys.argv[1:6]
    max_files = int(sys.argv[6]) if len(sys.argv) > 6 else 100
    u = urlparse(url)
    jdbc = f"jdbc:postgresql://{u.hostname}:{u.port or 5432}{u.path}?reWriteBatchedInserts=true"
    props = {"user": u.username or "postgres", "password": u.password or "", "driver": "org.postgresql.Driver"}
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("CREATE UNLOGGED TABLE IF NOT EXISTS spark_stage (LIKE events INCLUDING DEFAULTS) ")
        c.execute("ALTER TABLE spark_stage DROP COLUMN IF EXISTS event_id")
        c.execute("CREATE TABLE IF NOT EXISTS spark_loads (file_name TEXT, batch_id BIGINT, "
                  "committed_at TIMESTAMPTZ DEFAULT clock_timestamp())")

    spark = (SparkSession.builder.master("local[2]").appName("spark-peer")
             .config("spark.jars", jar)
             .config("spark.sql.shuffle.partitions", "2")
             .config("spark.ui.enabled", "false")
             .config("spark.sql.session.timeZone", "UTC")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")

    stream = (spark.readStream.schema(SCHEMA)
              .option("header", True)
              .option("mode", "DROPMALFORMED")
              .option("timestampFormat", "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]XXX")
              .option("maxFilesPerTrigger", max_files)
              .csv(data)
              .withColumn("src", F.input_file_name()))

    def upsert(df, batch_id):
        started = time.time()
        df = df.dropDuplicates(["user_id", "event_time"]).cache()
        files = [r.src.rsplit("/", 1)[-1] for r in df.select("src").distinct().collect()]
        rows = df.count()
        with psycopg.connect(url) as c:
            c.execute("TRUNCATE spark_stage")
        df.drop("src").write.jdbc(jdbc, "spark_stage", mode="append", properties={**props, "batchsize": "10000"})
        with psycopg.connect(url) as c:  # one transaction: the rows and the files
            c.execute(UPSERT)
            c.cursor().executemany("INSERT INTO spark_loads (file_name, batch_id) VALUES (%s, %s)",
                                   [(f, batch_id) for f in files])
        df.unpersist()
        print(json.dumps({"batch_id": batch_id, "files": len(files), "rows": rows,
                          "seconds": time.time() - started}), flush=True)

    writer = stream.writeStream.foreachBatch(upsert).option("checkpointLocation", checkpoint)
    if mode == "once":
        writer.trigger(availableNow=True).start().awaitTermination()
    else:
        query = writer.trigger(processingTime="0 seconds").start()
        signal.signal(signal.SIGTERM, lambda *_: query.stop())
        query.awaitTermination()
    spark.stop()


if __name__ == "__main__":
    main()
