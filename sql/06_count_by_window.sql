-- Course program: how many lines came in the last 30 seconds, every 10 seconds (lab 10, step 6:
-- `lines.countByWindow(30, 10)` over `ssc.socketTextStream("localhost", 9999)`).
--
--   cat data/rsvps/*.json | nc -lk 9999                 # terminal 1 (the lab: curl ... | nc -lk 9999)
--   cargo run -- run sql/06_count_by_window.sql         # terminal 2; Ctrl-C to stop
--
-- `window(current_timestamp(), '30 seconds', '10 seconds')` puts every line in the three 30-second
-- windows, sliding every 10 seconds, around the moment it was read. Append mode prints each window
-- once, when the clock passes its end: every 10 seconds the count of the 30 seconds before, as the
-- DStream printed it (a DStream also prints 0 for a window without lines; here such a window has
-- no row, so nothing is printed). The DStream needed ssc.checkpoint(...) for the window; here the
-- state lives in a temporary checkpoint unless the sink names one with checkpoint_location.

CREATE TABLE lines (value VARCHAR)
WITH (connector = 'socket', host = 'localhost', port = '9999');

CREATE TABLE line_counts
WITH (connector = 'console', output_mode = 'append', truncate = 'false');

INSERT INTO line_counts
SELECT window(current_timestamp(), '30 seconds', '10 seconds') AS last_30_seconds, count(*) AS lines
FROM lines
GROUP BY window(current_timestamp(), '30 seconds', '10 seconds');
