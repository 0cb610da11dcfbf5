-- Course program: the 5 most traded symbols of the last hour, updated every batch (lecture,
-- windows-operations.py: `orders.map(lambda x: (x['symbol'], x['amount'])).window(60*60)` then
-- `reduceByKey(add)`, sorted, first five).
--
--   cargo run -- run sql/05_orders_top_symbols.sql
--
-- Processing time, not the orders' `time` column: the course's DStream window is "what arrived in
-- the last hour", sliding with every 3-second batch, and the bundled orders (like the course's
-- orders.txt) were placed in 2016, so an event-time hour would hold them all and never move.
-- `window(current_timestamp(), '1 hour', '3 seconds')` puts every order in the 1200 one-hour
-- windows around the moment it was read; the window ending next (within one slide from now) is
-- the last hour, the WHERE keeps it, and complete mode with ORDER BY ... LIMIT 5 its top five.
-- Note: the WHERE on now() relies on now() being the batch's time after the aggregation too.

CREATE TABLE orders (
  time TIMESTAMP, order_id BIGINT, client_id BIGINT, symbol VARCHAR,
  amount INT, price DOUBLE, buy_or_sell VARCHAR
) WITH (connector = 'files', format = 'csv', header = 'false', mode = 'drop_malformed',
        path = 'data/orders');

CREATE TABLE top_symbols
WITH (connector = 'console', output_mode = 'complete', trigger = 'available_now', truncate = 'false');

INSERT INTO top_symbols
SELECT w.start AS window_start, w['end'] AS window_end, symbol, amount
FROM (
  SELECT window(current_timestamp(), '1 hour', '3 seconds') AS w, symbol, sum(amount) AS amount
  FROM orders
  WHERE buy_or_sell IN ('B', 'S')
  GROUP BY window(current_timestamp(), '1 hour', '3 seconds'), symbol
)
WHERE w['end'] > now() AND w['end'] <= now() + INTERVAL '3 seconds'
ORDER BY amount DESC, symbol
LIMIT 5;
