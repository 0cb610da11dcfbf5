-- Course program: the top 5 clients by the value they traded so far (lecture, top-clients.py:
-- `updateStateByKey` over `amount * price` per client, sorted, first five with zipWithIndex).
--
--   cargo run -- run sql/05_orders_top_clients.sql
--
-- The running total per client is a plain aggregation whose state Tidewater keeps; complete mode
-- prints the whole result after every batch, so ORDER BY ... LIMIT 5 is the top five so far.
-- Malformed lines are dropped (mode = 'drop_malformed'), as the course's parseOrder skipped them.

CREATE TABLE orders (
  time TIMESTAMP, order_id BIGINT, client_id BIGINT, symbol VARCHAR,
  amount INT, price DOUBLE, buy_or_sell VARCHAR
) WITH (connector = 'files', format = 'csv', header = 'false', mode = 'drop_malformed',
        path = 'data/orders', max_files_per_trigger = '1');

CREATE TABLE top_clients
WITH (connector = 'console', output_mode = 'complete', trigger = 'available_now');

INSERT INTO top_clients
SELECT client_id, sum(amount * price) AS traded
FROM orders
WHERE buy_or_sell IN ('B', 'S')
GROUP BY client_id
ORDER BY traded DESC, client_id
LIMIT 5;
