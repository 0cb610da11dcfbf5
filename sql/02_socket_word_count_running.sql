-- Course program: the stateful network word count (`updateStateByKey`, stateful_network_wordcount.py).
-- Lines arrive on a TCP socket; after every batch print how often each word came so far.
--
--   nc -lk 9999 < data/words/words.txt                      # terminal 1
--   cargo run -- run sql/02_socket_word_count_running.sql   # terminal 2; Ctrl-C to stop
--
-- `updateStateByKey(lambda new, last: sum(new) + (last or 0))` keeps a running total per key;
-- here that is a plain GROUP BY whose state Tidewater keeps, and complete mode prints the whole
-- table after every batch (sorted by word, as the course's `.transform(lambda x: x.sortByKey())`).
-- Spark Structured Streaming: words.groupBy("word").count(), outputMode("complete").

CREATE TABLE lines (value VARCHAR)
WITH (connector = 'socket', host = 'localhost', port = '9999');

CREATE TABLE running_counts
WITH (connector = 'console', output_mode = 'complete', num_rows = '100');

INSERT INTO running_counts
SELECT word, count(*) AS n
FROM (SELECT unnest(string_to_array(value, ' ')) AS word FROM lines)
WHERE word <> ''
GROUP BY word
ORDER BY word;
