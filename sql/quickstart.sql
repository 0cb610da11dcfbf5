-- Tidewater quickstart: the classic "extract the venue from RSVP JSON lines" lab.
-- Every file in data/rsvps holds one meetup RSVP per line, as raw JSON text. The query reads the
-- files as a stream (one file per batch), pulls fields out of the JSON and prints each batch.
-- Run it with: cargo run -- run sql/quickstart.sql

CREATE TABLE rsvps (value VARCHAR)
WITH (connector = 'files', format = 'text', path = 'data/rsvps', max_files_per_trigger = '1');

CREATE TABLE venues
WITH (connector = 'console', trigger = 'available_now', truncate = 'false');

INSERT INTO venues
SELECT json_get_str(value, 'venue', 'venue_name') AS venue,
       json_get_str(value, 'member', 'member_name') AS member,
       upper(json_get_str(value, 'response')) AS response,
       json_get_int(value, 'guests') AS guests
FROM rsvps
WHERE json_get_str(value, 'venue', 'venue_name') IS NOT NULL;
