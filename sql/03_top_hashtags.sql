-- Course program: the hashtag count of hands-on 3 ("Counting words from Twitter posts"). Tweets
-- arrive on a TCP socket, one per line; every batch prints the 10 most used hashtags of the last
-- 60 seconds, a window sliding every 10 seconds, as a DStream job with
-- `reduceByKeyAndWindow(add, None, 60, 10)` and `transform(lambda rdd: rdd.sortBy(...))` would.
--
--   nc -lk 9999 < data/tweets/tweets.txt                # terminal 1: replays sample tweets
--   cargo run -- run sql/03_top_hashtags.sql            # terminal 2; Ctrl-C to stop
--
-- Every tweet counts in the six 60-second windows (sliding every 10 seconds) around the moment it
-- arrived: `window(current_timestamp(), '60 seconds', '10 seconds')` over processing time. Of
-- those windows, the one ending next is "the last 60 seconds" (it ends within one slide from
-- now); complete mode keeps every window, the WHERE keeps that one, and ORDER BY ... LIMIT keeps
-- its top 10. Hashtags are words starting with '#', lower-cased, punctuation removed.
-- Note: the WHERE on now() relies on now() being the batch's time after the aggregation too.

CREATE TABLE tweets (value VARCHAR)
WITH (connector = 'socket', host = 'localhost', port = '9999');

CREATE TABLE top_hashtags
WITH (connector = 'console', output_mode = 'complete', truncate = 'false');

INSERT INTO top_hashtags
SELECT w.start AS window_start, w['end'] AS window_end, hashtag, n
FROM (
  SELECT window(current_timestamp(), '60 seconds', '10 seconds') AS w, hashtag, count(*) AS n
  FROM (
    SELECT lower(regexp_replace(word, '[^#[:alnum:]_]', '', 'g')) AS hashtag
    FROM (SELECT unnest(string_to_array(value, ' ')) AS word FROM tweets)
    WHERE word LIKE '#%'
  )
  WHERE hashtag <> '#'
  GROUP BY window(current_timestamp(), '60 seconds', '10 seconds'), hashtag
)
WHERE w['end'] > now() AND w['end'] <= now() + INTERVAL '10 seconds'
ORDER BY n DESC, hashtag
LIMIT 10;
