-- Course program: count each action per hour of event time, with late data and a watermark, into
-- a database (lecture, "Spark Structured Streaming API": phones send (phone_id, time, action)
-- events; `inputDF.groupBy($"action", window($"time", "1 hour")).count()` written to MySQL).
--
--   cargo run -- run sql/07_hourly_actions.sql
--   sqlite3 out/hourly_actions.db 'SELECT action, w_start, n FROM hourly_actions ORDER BY w_start, action'
--
-- The files in data/events come one per batch (oldest first: they are named in that order). The
-- open of phone 3 at 01:58 arrives after events of 02:10, yet still counts in the 01:00 hour: the
-- watermark (latest event time minus 10 minutes) has not passed 02:00 yet, and update mode
-- updates that hour's row in the table, as the lecture's picture shows. The close of phone 4 at
-- 01:55 comes two files after events of 03:12: the watermark has passed the end of the 01:00 hour,
-- which is final, so the row is dropped and counted (numRowsDroppedByWatermark).
-- The sink creates table hourly_actions (action, w_start, w_end, n; key action, w_start, w_end)
-- in out/hourly_actions.db; each batch is one transaction, written exactly once. Run the file
-- again and nothing changes until new files come into data/events; delete out/ to start over.
-- PostgreSQL or MySQL instead: url = 'postgres://user@host:5432/db' or 'mysql://user@host:3306/db'.

CREATE TABLE events (
  phone_id INT, time TIMESTAMP, action VARCHAR,
  WATERMARK FOR time AS time - INTERVAL '10' MINUTE
) WITH (connector = 'files', format = 'json', path = 'data/events', max_files_per_trigger = '1');

CREATE TABLE hourly_actions
WITH (connector = 'database', url = 'sqlite://out/hourly_actions.db', table = 'hourly_actions',
      output_mode = 'update', checkpoint_location = 'out/checkpoints/hourly_actions',
      trigger = 'available_now');

INSERT INTO hourly_actions
SELECT action, window(time, '1 hour') AS w, count(*) AS n
FROM events
GROUP BY action, window(time, '1 hour');
