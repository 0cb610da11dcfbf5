-- Course program: count the buy and the sell orders of each batch (lecture, count-buys.py:
-- `orders.map(lambda o: (o['buy'], 1)).reduceByKey(add)` with `StreamingContext(sc, 3)`).
--
--   cargo run -- run sql/05_orders_buys_sells.sql --progress
--
-- Orders are CSV lines `time,order_id,client_id,symbol,amount,price,buy_or_sell`. The course's
-- parseOrder skipped lines it could not parse; mode = 'drop_malformed' does that here (the bundled
-- files hold 3 such lines: counted as numDroppedMalformedRecords in the progress report). A DStream
-- batch of 3 seconds is a processing-time window: update mode prints the counts of the batch's
-- window. With available_now the bundled files are read in one batch: B 22, S 20. For a live
-- directory (the course's splitAndSend.sh moves a chunk in every 3 seconds) leave out the trigger.

CREATE TABLE orders (
  time TIMESTAMP, order_id BIGINT, client_id BIGINT, symbol VARCHAR,
  amount INT, price DOUBLE, buy_or_sell VARCHAR
) WITH (connector = 'files', format = 'csv', header = 'false', mode = 'drop_malformed',
        path = 'data/orders');

CREATE TABLE buys_sells
WITH (connector = 'console', output_mode = 'update', trigger = 'available_now', truncate = 'false');

INSERT INTO buys_sells
SELECT window(current_timestamp(), '3 seconds') AS batch, buy_or_sell, count(*) AS orders
FROM orders
WHERE buy_or_sell IN ('B', 'S')
GROUP BY window(current_timestamp(), '3 seconds'), buy_or_sell;
