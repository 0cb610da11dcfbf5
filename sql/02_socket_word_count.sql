-- Course program: the network word count (Spark Streaming's NetworkWordCount; hands-on 3, part 5).
-- Lines arrive on a TCP socket; every 10 seconds print how often each word came in those 10
-- seconds, as a DStream with `StreamingContext(sc, 10)` prints `words.countByValue()` per batch.
--
--   nc -lk 9999 < data/words/words.txt        # terminal 1: a line server (or type lines into `nc -lk 9999`)
--   cargo run -- run sql/02_socket_word_count.sql   # terminal 2; Ctrl-C to stop
--
-- The DStream batch is a processing-time window here: `window(current_timestamp(), '10 seconds')`
-- puts each line in the 10-second window of the batch that read it. In append mode each window is
-- printed once, when the clock passes its end. A DStream also prints empty batches; a window
-- without lines has no rows, so nothing is printed for it.
-- Spark Structured Streaming: lines.select(explode(split(col("value"), " ")).alias("word"))
--   .groupBy(window(current_timestamp(), "10 seconds"), col("word")).count()

CREATE TABLE lines (value VARCHAR)
WITH (connector = 'socket', host = 'localhost', port = '9999');

CREATE TABLE word_counts
WITH (connector = 'console', output_mode = 'append', truncate = 'false', num_rows = '100');

INSERT INTO word_counts
SELECT window(current_timestamp(), '10 seconds') AS batch, word, count(*) AS n
FROM (SELECT unnest(string_to_array(value, ' ')) AS word FROM lines)
WHERE word <> ''
GROUP BY window(current_timestamp(), '10 seconds'), word;
